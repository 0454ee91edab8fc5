"""Shard build: users' chronological histories as concept-ID tokens in WebDataset tar shards.

A user's sequence is ``bos``, each item's L tokens in time order, then ``eos`` when the history is complete
(docs/formats.md); the tar and manifest layout is in :mod:`recbase.data.shard_format`.

Everything is a pure function of the inputs and the config, so a rebuild is byte-identical: users are ordered by
a seeded stable hash (which also mixes domains), blocks and shards are cut at fixed token counts, and tar
members carry fixed mtimes, owners and modes. A task of a multi-machine build (``task_index`` of ``num_tasks``)
takes the users whose unseeded stable hash falls in its slice and names its shards ``<split>-t<task>-<n>.tar``,
so tasks never clash. Shards are written under a temporary name and renamed, so a rerun skips the shards that
exist and rebuilds only the missing ones.

Only the builder reads Parquet: pyarrow and the tables module are imported where the inputs are read, so
:func:`write_sequence_shards` runs on a machine without them (a bare GPU machine, see docs/benchmarks.md).
"""
from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from recbase.config import AT_LEAST_0, AT_LEAST_1, Range, check_ranges, to_dict
from recbase.data.codes import read_codes
from recbase.data.evalsets import EvalSetConfig, build_eval_set
from recbase.data.sequences import DomainSequences, assemble, load_domain, stable_hash
from recbase.data.shard_format import (FORMAT, TASK_DIR, digest_path, encode_block, merge_manifests, shard_is_intact,
                                       shard_name, token_dtype, write_shard)
from recbase.errors import UserError
from recbase.io import atomic_write_text, plain_name, sha256_file
from recbase.vocab import Vocab

log = logging.getLogger(__name__)

SPLITS = ("train", "valid")
BUILD_STAMP = "build.json"
EVAL_DIR = "eval"


SHARD_RANGES = {"codebook_size": AT_LEAST_0, "tokens_per_shard": AT_LEAST_1, "tokens_per_block": AT_LEAST_1,
                "holdout": AT_LEAST_0, "workers": AT_LEAST_1, "num_tasks": AT_LEAST_1, "seed": AT_LEAST_0,
                "eval.positives": Range(1, 10), "eval.negatives_per_positive": AT_LEAST_1, "eval.max_pairs": AT_LEAST_1}


@dataclass
class ShardConfig:
    """Options of ``tokenizer/build_shards.py`` / ``recbase shards``."""

    data_dir: str = "data"                                     # folder of <domain>/{items,interactions}.parquet
    domains: list[str] = field(default_factory=list)           # pretraining domains; empty = all not held out
    heldout_domains: list[str] = field(default_factory=list)   # domains that get eval sets only, never shards
    codes_path: str = "codes.parquet"                          # item -> concept codes (docs/formats.md)
    codebook_size: int = 0                                     # K; 0 = from the codes.parquet metadata
    out_dir: str = "shards"                                    # shards go to <out_dir>/<name>/
    name: str = "default"                                      # name of this shard set
    tokens_per_shard: int = 16_000_000                         # a shard closes after about this many tokens
    tokens_per_block: int = 65_536                             # a tar entry holds about this many tokens
    holdout: int = 1                                           # h: valid targets = items[-2h:-h], test = last h
    workers: int = 1                                           # processes writing shards
    task_index: int = 0                                        # this task's slice of users (SLURM array index)
    num_tasks: int = 1                                         # number of slices
    seed: int = 0                                              # user order and eval-set sampling
    eval: EvalSetConfig = field(default_factory=EvalSetConfig)


# --------------------------------------------------------------------------------------------------- layout


@dataclass
class SplitUsers:
    """The users of one split of one task, in shard order, with where each of their tokens comes from."""

    split: str
    domain: np.ndarray       # int64 index into domain_names
    user_ids: list[str]
    starts: np.ndarray       # row in the concatenated item_tokens
    counts: np.ndarray       # items in the sequence
    eos: np.ndarray          # bool
    label_from: np.ndarray   # token offset where the held-out targets start (valid), 0 for train
    lengths: np.ndarray      # tokens per user
    block: np.ndarray        # block index of each user (consecutive from 0)
    shard: np.ndarray        # shard index of each block


def _cut(lengths: np.ndarray, size: int) -> np.ndarray:
    """Group consecutive items into runs of about ``size`` tokens: an item's run is its start offset // size."""
    start = np.cumsum(lengths) - lengths
    _, run = np.unique(start // max(size, 1), return_inverse=True)
    return run.astype(np.int64)


def user_hashes(seqs: list[DomainSequences], seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per domain: each user's unseeded hash (picks the task) and seeded hash (orders users), computed once."""
    return [(np.fromiter((stable_hash(s.domain, u) for u in s.user_ids), np.int64, len(s.user_ids)),
             np.fromiter((stable_hash(seed, s.domain, u) for u in s.user_ids), np.int64, len(s.user_ids)))
            for s in seqs]


def layout_split(split: str, seqs: list[DomainSequences], hashes: list[tuple[np.ndarray, np.ndarray]],
                 cfg: ShardConfig, n_levels: int, skipped: Counter) -> SplitUsers:
    """Select this task's users, order them by their seeded hash and cut them into blocks and shards."""
    h = cfg.holdout
    parts = []
    base = 0
    for d, (s, (task_hash, order_hash)) in enumerate(zip(seqs, hashes)):
        mine = task_hash % cfg.num_tasks == cfg.task_index
        sel = np.flatnonzero(mine & (s.counts > 2 * h))
        if split == "train" and len(sel) < mine.sum():
            skipped[f"users with <= {2 * h} interactions (nothing left after the held-out items)"] += \
                int(mine.sum()) - len(sel)
        n = s.counts[sel]
        parts.append((np.full(len(sel), d, np.int64), [s.user_ids[i] for i in sel], base + s.starts[sel],
                      n - 2 * h if split == "train" else n - h,
                      np.zeros(len(sel), np.int64) if split == "train" else 1 + (n - 2 * h) * n_levels,
                      order_hash[sel]))
        base += len(s.item_tokens)
    dom, starts, counts, label_from, keys = (np.concatenate([p[i] for p in parts]) if parts else np.zeros(0, np.int64)
                                             for i in (0, 2, 3, 4, 5))
    users = [u for p in parts for u in p[1]]
    order = np.argsort(keys, kind="stable")
    counts = counts[order]
    eos = np.full(len(order), h == 0)
    lengths = 1 + counts * n_levels + eos
    block = _cut(lengths, cfg.tokens_per_block)
    block_tokens = np.bincount(block, weights=lengths).astype(np.int64) if len(block) else np.zeros(0, np.int64)
    shard = _cut(block_tokens, cfg.tokens_per_shard)
    return SplitUsers(split, dom[order], [users[i] for i in order], starts[order], counts, eos, label_from[order],
                      lengths, block, shard)


def _span(sorted_ids: np.ndarray, value: int) -> range:
    """Positions holding ``value`` in a non-decreasing id array (users of a block, blocks of a shard)."""
    return range(int(np.searchsorted(sorted_ids, value, "left")), int(np.searchsorted(sorted_ids, value, "right")))


def _shard_users(su: SplitUsers, shard: int) -> slice:
    blocks = _span(su.shard, shard)
    return slice(_span(su.block, blocks.start).start, _span(su.block, blocks.stop - 1).stop)


# --------------------------------------------------------------------------------------------------- build


@dataclass
class _Work:
    """What shard writers need; a module global so forked workers share it without pickling."""

    cfg: ShardConfig
    vocab: Vocab
    item_tokens: np.ndarray
    domain_names: list[str]
    splits: dict[str, SplitUsers]
    root: Path


_WORK: _Work | None = None


def _shard_blocks(work: _Work, split: str, shard: int) -> list[tuple[str, dict[str, bytes]]]:
    su = work.splits[split]
    dtype = token_dtype(work.vocab)
    out = []
    for b in _span(su.shard, shard):
        span = _span(su.block, b)
        sel = slice(span.start, span.stop)
        tokens, offsets = assemble(work.item_tokens, su.starts[sel], su.counts[sel], su.eos[sel], work.vocab, dtype)
        meta = {"users": su.user_ids[sel], "domains": su.domain[sel].tolist(),
                "domain_names": work.domain_names}
        if split != "train":
            meta["label_from"] = su.label_from[sel].tolist()
        key = f"{split}-t{work.cfg.task_index:03d}-{shard:06d}-{int(b):06d}"
        out.append((key, encode_block(tokens, offsets, meta)))
    return out


def _build_one(job: tuple[str, int]) -> int:
    """Build one shard (in a worker or in-process); returns its token count."""
    split, shard = job
    work = _WORK
    blocks = _shard_blocks(work, split, shard)
    write_shard(work.root / split / shard_name(split, work.cfg.task_index, shard), blocks)
    return int(work.splits[split].lengths[_shard_users(work.splits[split], shard)].sum())


def _config_fingerprint(cfg: ShardConfig) -> dict:
    d = to_dict(cfg)
    for k in ("workers", "task_index"):
        d.pop(k)
    return d


def _check_stamp(root: Path, cfg: ShardConfig, tokenizer_hash: str, inputs: list[Path]) -> None:
    """Refuse to mix shards of different configs, tokenizers or input tables in one folder: a rerun that skips
    finished shards is only correct when it resumes the very same build."""
    stamp = {"format": FORMAT, "tokenizer_hash": tokenizer_hash, "config": _config_fingerprint(cfg),
             "inputs": {p.as_posix(): sha256_file(p) for p in inputs}}
    path = root / BUILD_STAMP
    if path.exists():
        old = json.loads(path.read_text(encoding="utf-8"))
        if old != stamp:
            changed = [k for k in stamp if k != "config" and old.get(k) != stamp[k]]
            changed += [f"config key {k}: {old['config'].get(k)!r} then, {v!r} now"
                        for k, v in stamp["config"].items() if old.get("config", {}).get(k) != v]
            raise UserError(f"{root} holds shards of another build ({'; '.join(changed)} differ from its "
                            f"{BUILD_STAMP}); rerun with the same settings, or pick another name")
    else:
        atomic_write_text(path, json.dumps(stamp, indent=2, sort_keys=True) + "\n")


def _split_stats(su: SplitUsers, seqs: list[DomainSequences], root: Path, task_index: int) -> tuple[list, dict]:
    """Per-shard and per-domain counts of one split."""
    items = su.counts
    shards = []
    for s in range(int(su.shard.max()) + 1 if len(su.shard) else 0):
        users = _shard_users(su, s)
        path = Path(su.split) / shard_name(su.split, task_index, s)
        shards.append({"path": path.as_posix(), "split": su.split, "users": users.stop - users.start,
                       "items": int(items[users].sum()), "tokens": int(su.lengths[users].sum()),
                       "blocks": int(np.count_nonzero(su.shard == s)),
                       "bytes": (root / path).stat().st_size,
                       "sha256": digest_path(root / path).read_text().strip()})
    domains = {}
    for d, s in enumerate(seqs):
        m = su.domain == d
        domains[s.domain] = {"users": int(m.sum()), "items": int(items[m].sum()), "tokens": int(su.lengths[m].sum())}
    return shards, domains


def _write_shards(jobs: list[tuple[str, int]], workers: int) -> int:
    """Write the shards ``jobs`` with ``workers`` processes, showing progress and throughput; returns tokens."""
    start, n_tokens = time.perf_counter(), 0
    with contextlib.ExitStack() as stack:
        if workers > 1 and len(jobs) > 1:
            pool = stack.enter_context(multiprocessing.get_context("fork").Pool(min(workers, len(jobs))))
            results = pool.imap_unordered(_build_one, jobs)
        else:
            results = map(_build_one, jobs)
        bar = stack.enter_context(tqdm(total=len(jobs), desc="write shards", unit="shard"))
        for n in results:
            n_tokens += n
            bar.update(1)
            bar.set_postfix(tok_s=f"{n_tokens / (time.perf_counter() - start):,.0f}")
    return n_tokens


def build_shards(cfg: ShardConfig) -> Path:
    """Build this task's shards (and, for task 0, the eval sets); merge the manifest once every task is done.

    Returns the shard folder ``<out_dir>/<name>``.
    """
    from recbase.data.tables import IMPRESSIONS_FILE, INTERACTIONS_FILE

    check_ranges(cfg, {**SHARD_RANGES, "task_index": Range(0, cfg.num_tasks - 1)})
    codes = read_codes(cfg.codes_path, cfg.codebook_size)
    pretrain_dirs, heldout_dirs = select_domains(cfg)
    root = Path(cfg.out_dir) / plain_name(cfg.name, "shard set name", "<out_dir>/<name>/")
    root.mkdir(parents=True, exist_ok=True)
    _check_stamp(root, cfg, codes.tokenizer_hash, [Path(cfg.codes_path)] + [
        d / name for d in pretrain_dirs + heldout_dirs for name in (INTERACTIONS_FILE, IMPRESSIONS_FILE)
        if (d / name).exists()])
    seqs = [load_domain(d, codes) for d in tqdm(pretrain_dirs, desc="read domains", unit="domain")]

    def eval_sets() -> dict:
        seen = sorted({d.name for d in heldout_dirs} & set(codes.tokenizer.get("train_domains") or []))
        if seen:
            log.warning("held-out domain(s) %s were among the tokenizer's training domains: their eval sets are not "
                        "zero-shot, and evaluation refuses them unless allow_seen_domains=true", ", ".join(seen))
        return {d.name: build_eval_set(d, codes, root / EVAL_DIR / f"{d.name}.parquet", cfg.eval, cfg.seed,
                                       [p.name for p in pretrain_dirs])
                for d in heldout_dirs}

    return write_sequence_shards(cfg, codes.vocab, codes.tokenizer_hash, seqs, eval_sets, codes.tokenizer)


def write_sequence_shards(cfg: ShardConfig, vocab: Vocab, tokenizer_hash: str, seqs: list[DomainSequences],
                          eval_sets=dict, tokenizer: dict | None = None) -> Path:
    """Lay out, write and describe the shards of ``seqs`` under ``<out_dir>/<name>``: everything the builder
    does after reading its inputs. ``eval_sets()`` (task 0 only) builds the held-out domains' eval sets once the
    shards are written and returns their manifest entries. ``tokenizer`` is the artifact's metadata (kind, embedder,
    training domains) recorded in the manifest."""
    global _WORK
    t0 = time.perf_counter()
    root = Path(cfg.out_dir) / cfg.name
    root.mkdir(parents=True, exist_ok=True)
    skipped: Counter = Counter()
    for s in seqs:
        skipped.update({f"{s.domain}: {k}": v for k, v in s.skipped.items()})
    hashes = user_hashes(seqs, cfg.seed)
    splits = {sp: layout_split(sp, seqs, hashes, cfg, vocab.levels, skipped)
              for sp in (SPLITS if cfg.holdout else SPLITS[:1])}
    item_tokens = np.concatenate([s.item_tokens for s in seqs]) if seqs else np.zeros((0, vocab.levels), token_dtype(vocab))
    _WORK = _Work(cfg, vocab, item_tokens, [s.domain for s in seqs], splits, root)

    jobs = [(sp, s) for sp, su in splits.items() for s in range(int(su.shard.max()) + 1 if len(su.shard) else 0)]
    # a shard is kept only when it matches the hash written with it: truncated or damaged ones are rebuilt
    todo = [j for j in jobs if not shard_is_intact(root / j[0] / shard_name(j[0], cfg.task_index, j[1]))]
    for sp in splits:
        (root / sp).mkdir(exist_ok=True)
    log.info("task %d/%d: %d shards, %d to build (%d already complete)", cfg.task_index, cfg.num_tasks, len(jobs),
             len(todo), len(jobs) - len(todo))
    try:
        n_tokens = _write_shards(todo, cfg.workers)
    finally:
        _WORK = None

    shards, domains = [], {}
    for sp, su in splits.items():
        sh, dm = _split_stats(su, seqs, root, cfg.task_index)
        shards += sh
        for name, stats in dm.items():
            domains.setdefault(name, {})[sp] = stats
    task = {"task_index": cfg.task_index, "num_tasks": cfg.num_tasks, "tokenizer_hash": tokenizer_hash,
            "tokenizer": tokenizer or {}, "vocab": vocab.to_dict(), "token_dtype": token_dtype(vocab).name,
            "shards": shards, "domains": domains, "eval_sets": eval_sets() if cfg.task_index == 0 else {},
            "skipped": dict(sorted(skipped.items())), "config": to_dict(cfg)}
    atomic_write_text(root / TASK_DIR / f"task-{cfg.task_index:03d}.json", json.dumps(task, indent=2) + "\n")
    elapsed = time.perf_counter() - t0
    log.info("task %d: wrote %s tokens in %.1fs (%.0f tokens/s)", cfg.task_index, f"{n_tokens:,}", elapsed,
             n_tokens / max(elapsed, 1e-9))
    merge_manifests(root, cfg.num_tasks, missing_ok=True)
    return root


def select_domains(cfg: ShardConfig) -> tuple[list[Path], list[Path]]:
    """The pretraining and held-out domain folders named by the config (all non-held-out ones by default)."""
    from recbase.data.tables import list_domains

    found = {p.name: p for p in list_domains(cfg.data_dir)} if Path(cfg.data_dir).is_dir() else {}
    if not found:
        raise UserError(f"{cfg.data_dir}: no domain folders with items.parquet and interactions.parquet")
    both = sorted(set(cfg.domains) & set(cfg.heldout_domains))
    if both:
        raise UserError(f"domains {', '.join(both)} are both pretraining and held-out domains")
    for name in list(cfg.domains) + list(cfg.heldout_domains):
        if name not in found:
            raise UserError(f"domain '{name}' not found in {cfg.data_dir} (have {', '.join(sorted(found))})")
    pretrain = list(cfg.domains) or [n for n in found if n not in cfg.heldout_domains]
    return [found[n] for n in sorted(pretrain)], [found[n] for n in sorted(cfg.heldout_domains)]
