"""Shard build: users' chronological histories as concept-ID tokens in WebDataset tar shards.

A user's sequence is ``bos``, each item's L tokens in time order, then ``eos`` when the history is complete
(docs/formats.md); the tar and manifest layout is in :mod:`recbase.data.shard_format`.

Everything is a pure function of the inputs and the config, so a rebuild is byte-identical: users are ordered by
a seeded stable hash (which also mixes domains), blocks and shards are cut at fixed token counts, and tar
members carry fixed mtimes, owners and modes. A task of a multi-machine build (``task_index`` of ``num_tasks``)
takes the users whose unseeded stable hash falls in its slice and names its shards ``<split>-t<task>-<n>.tar``,
so tasks never clash. Shards are written under a temporary name and renamed, so a rerun skips the shards that
exist and rebuilds only the missing ones. The users arrive in slices of bounded size (:mod:`recbase.data.user_slices`)
and blocks and shards are cut as they stream past, so memory holds one slice and one shard per split, whatever the
corpus size, and the bytes do not depend on the number of slices.

Only the builder reads Parquet: pyarrow and the tables module are imported where the inputs are read, so
:func:`write_sequence_shards` runs on a machine without them (a bare GPU machine, see docs/benchmarks.md).
"""
from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from recbase.config import AT_LEAST_0, AT_LEAST_1, Range, check_ranges, to_dict
from recbase.data.codes import read_codes
from recbase.data.evalsets import EvalSetConfig, build_eval_set
from recbase.data.sequences import DomainSequences, assemble, stable_hash
from recbase.data.shard_format import (FORMAT, TASK_DIR, digest_path, encode_block, merge_manifests, shard_is_intact,
                                       shard_name, token_dtype, write_shard)
from recbase.data.user_slices import count_slices, user_slices
from recbase.errors import UserError
from recbase.io import atomic_write_text, plain_name, sha256_file
from recbase.vocab import Vocab

log = logging.getLogger(__name__)

SPLITS = ("train", "valid")
BUILD_STAMP = "build.json"
EVAL_DIR = "eval"
SLICES_DIR = ".slices"   # <root>/.slices-t<task>: a task's slice files while it runs


SHARD_RANGES = {"codebook_size": AT_LEAST_0, "tokens_per_shard": AT_LEAST_1, "tokens_per_block": AT_LEAST_1,
                "holdout": AT_LEAST_0, "workers": AT_LEAST_1, "slice_rows": AT_LEAST_1, "num_tasks": AT_LEAST_1,
                "seed": AT_LEAST_0, "eval.positives": Range(1, 10), "eval.negatives_per_positive": AT_LEAST_1,
                "eval.max_pairs": AT_LEAST_1}


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
    workers: int = 1                                           # threads writing shard files
    slice_rows: int = 2_000_000                                # interactions read into memory at once (the
                                                               # shards do not depend on it)
    task_index: int = 0                                        # this task's slice of users (SLURM array index)
    num_tasks: int = 1                                         # number of slices
    seed: int = 0                                              # user order and eval-set sampling
    eval: EvalSetConfig = field(default_factory=EvalSetConfig)


# --------------------------------------------------------------------------------------------------- layout


@dataclass
class SliceUsers:
    """One split's users of one slice, in shard order, with where each of their tokens comes from."""

    domain: np.ndarray       # int64 index into the domain names
    user_ids: list[str]
    starts: np.ndarray       # row in the slice's concatenated item_tokens
    counts: np.ndarray       # items in the sequence
    eos: np.ndarray          # bool
    label_from: np.ndarray   # token offset where the held-out targets start (valid), 0 for train
    lengths: np.ndarray      # tokens per user


def user_hashes(seqs: list[DomainSequences], seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per domain: each user's unseeded hash (picks the task) and seeded hash (orders users), computed once."""
    return [(np.fromiter((stable_hash(s.domain, u) for u in s.user_ids), np.int64, len(s.user_ids)),
             np.fromiter((stable_hash(seed, s.domain, u) for u in s.user_ids), np.int64, len(s.user_ids)))
            for s in seqs]


def order_users(split: str, seqs: list[DomainSequences], hashes: list[tuple[np.ndarray, np.ndarray]],
                cfg: ShardConfig, n_levels: int, skipped: Counter) -> SliceUsers:
    """Select this task's users of one slice and order them by their seeded hash (ties: domain, then user id)."""
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
    return SliceUsers(dom[order], [users[i] for i in order], starts[order], counts, eos, label_from[order],
                      1 + counts * n_levels + eos)


# --------------------------------------------------------------------------------------------------- build


class _SplitWriter:
    """Cuts one split's users, arriving slice after slice in shard order, into blocks of about
    ``tokens_per_block`` tokens and shards of about ``tokens_per_shard``, and hands each shard to ``write`` once
    its last block is complete. A block or shard starts with the user whose first token's offset in the split
    enters a new multiple of the size, so the cuts depend on the order of users only, not on the slices. A shard
    already on disk with its hash is counted, not rebuilt."""

    def __init__(self, split: str, cfg: ShardConfig, vocab: Vocab, domain_names: list[str], root: Path, write):
        self.split, self.cfg, self.vocab, self.domain_names, self.root, self.write = \
            split, cfg, vocab, domain_names, root, write
        self.dtype = token_dtype(vocab)
        self.offset = 0                        # tokens of the split before the next user
        self.block = self.shard = -1           # index of the open block and shard
        self.block_key = self.shard_key = -1   # offset // size of the open block's and shard's first user
        self.parts: list[tuple] = []           # pieces of the open block, one per slice it spans
        self.blocks: list[tuple[str, dict[str, bytes]]] = []   # finished blocks of the open shard
        self.intact = False                    # the open shard is on disk already
        self.kept = 0                          # shards found on disk already
        self.shards: list[dict] = []           # manifest entries, the open shard's last
        self.domains = {name: Counter(users=0, items=0, tokens=0) for name in domain_names}
        self.built_tokens = 0                  # tokens of the shards written by this run

    def add(self, su: SliceUsers, item_tokens: np.ndarray) -> None:
        """Append the users of one slice (``item_tokens``: that slice's)."""
        if not len(su.lengths):
            return
        first = self.offset + np.cumsum(su.lengths) - su.lengths
        self.offset += int(su.lengths.sum())
        key = first // self.cfg.tokens_per_block
        runs = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
        for a, b in zip(runs.tolist(), np.r_[runs[1:], len(key)].tolist()):
            if key[a] != self.block_key:
                self._close_block()
                self.block, self.block_key = self.block + 1, int(key[a])
                if first[a] // self.cfg.tokens_per_shard != self.shard_key:
                    self._close_shard()
                    self._open_shard(int(first[a] // self.cfg.tokens_per_shard))
                self.shards[-1]["blocks"] += 1
            entry = self.shards[-1]
            entry["users"] += b - a
            entry["items"] += int(su.counts[a:b].sum())
            entry["tokens"] += int(su.lengths[a:b].sum())
            if not self.intact:
                tokens, offsets = assemble(item_tokens, su.starts[a:b], su.counts[a:b], su.eos[a:b], self.vocab,
                                           self.dtype)
                self.parts.append((tokens, offsets, su.user_ids[a:b], su.domain[a:b], su.label_from[a:b]))
        for d, name in enumerate(self.domain_names):
            m = su.domain == d
            self.domains[name].update(users=int(m.sum()), items=int(su.counts[m].sum()),
                                      tokens=int(su.lengths[m].sum()))

    def finish(self) -> None:
        self._close_block()
        self._close_shard()

    def _open_shard(self, key: int) -> None:
        self.shard, self.shard_key = self.shard + 1, key
        path = Path(self.split) / shard_name(self.split, self.cfg.task_index, self.shard)
        # a shard is kept only when it matches the hash written with it: truncated or damaged ones are rebuilt
        self.intact = shard_is_intact(self.root / path)
        self.kept += self.intact
        self.shards.append({"path": path.as_posix(), "split": self.split, "users": 0, "items": 0, "tokens": 0,
                            "blocks": 0})

    def _close_block(self) -> None:
        if not self.parts:
            return
        tokens = np.concatenate([p[0] for p in self.parts])
        ends = np.cumsum([len(p[0]) for p in self.parts]) - [len(p[0]) for p in self.parts]
        offsets = np.concatenate([[0]] + [p[1][1:] + end for p, end in zip(self.parts, ends)])
        meta = {"users": [u for p in self.parts for u in p[2]],
                "domains": np.concatenate([p[3] for p in self.parts]).tolist(), "domain_names": self.domain_names}
        if self.split != "train":
            meta["label_from"] = np.concatenate([p[4] for p in self.parts]).tolist()
        key = f"{self.split}-t{self.cfg.task_index:03d}-{self.shard:06d}-{self.block:06d}"
        self.blocks.append((key, encode_block(tokens, offsets, meta)))
        self.parts = []

    def _close_shard(self) -> None:
        if self.shard < 0:
            return
        if not self.intact:
            self.write(self.root / self.shards[-1]["path"], self.blocks)
            self.built_tokens += self.shards[-1]["tokens"]
        self.blocks = []


class _ShardFiles:
    """Writes finished shards: in this process, or with ``workers`` threads (the tar and its SHA-256 release the
    GIL), keeping at most ``workers`` shards in flight so memory stays bounded."""

    def __init__(self, workers: int):
        self.pool = ThreadPoolExecutor(workers) if workers > 1 else None
        self.workers = workers
        self.pending: list = []

    def __call__(self, path: Path, blocks: list[tuple[str, dict[str, bytes]]]) -> None:
        if self.pool is None:
            write_shard(path, blocks)
            return
        self.pending.append(self.pool.submit(write_shard, path, blocks))
        while len(self.pending) > self.workers:
            self.pending.pop(0).result()

    def close(self) -> None:
        try:
            for f in self.pending:
                f.result()
        finally:
            if self.pool is not None:
                self.pool.shutdown(cancel_futures=True)


RUN_KEYS = ("workers", "task_index", "slice_rows")        # how a build runs, not what it writes
LOCATION_KEYS = ("data_dir", "codes_path", "out_dir")   # where its inputs and shards lie, not what they hold


def _config_fingerprint(cfg: ShardConfig) -> dict:
    return {k: v for k, v in to_dict(cfg).items() if k not in RUN_KEYS + LOCATION_KEYS}


def _build_stamp(cfg: ShardConfig, tokenizer_hash: str, inputs: dict[str, Path]) -> dict:
    """The ``build.json`` of this build. Inputs are named as the build reads them (``codes``, ``<domain>/<table>``)
    and known by their SHA-256, and the config leaves out the folders, so the same build from a copied or moved
    folder is the same build."""
    return {"format": FORMAT, "tokenizer_hash": tokenizer_hash, "config": _config_fingerprint(cfg),
            "inputs": {name: sha256_file(path) for name, path in inputs.items()}}


def _named(old: dict) -> dict:
    """A ``build.json`` as builds wrote it before inputs were named by content (the folders in the config, inputs
    keyed by their paths as given), in today's terms; a current one unchanged."""
    config = old.get("config", {})
    if not any(k in config for k in LOCATION_KEYS):
        return old
    codes = Path(config.get("codes_path", "")).as_posix()
    inputs = {("codes" if key == codes else "/".join(Path(key).parts[-2:])): digest
              for key, digest in old.get("inputs", {}).items()}
    return {**old, "config": {k: v for k, v in config.items() if k not in LOCATION_KEYS}, "inputs": inputs}


def _differences(root: Path, stamp: dict) -> list[str]:
    """What differs between the build ``stamp`` and the one whose ``build.json`` is in ``root`` (nothing when
    there is none): a rerun that skips finished shards is only correct when it resumes the very same build."""
    path = root / BUILD_STAMP
    if not path.exists():
        return []
    old = _named(json.loads(path.read_text(encoding="utf-8")))
    if old == stamp:
        return []
    changed = [k for k in ("format", "tokenizer_hash") if old.get(k) != stamp[k]]
    before, now = old.get("inputs", {}), stamp["inputs"]
    inputs = sorted(n for n in {**before, **now} if before.get(n) != now.get(n))
    changed += [f"inputs ({', '.join(inputs)})"] if inputs else []
    changed += [f"config key {k}: {old['config'].get(k)!r} then, {v!r} now"
                for k, v in stamp["config"].items() if old.get("config", {}).get(k) != v]
    return changed or ["its layout"]


def _target(root: Path, stamp: dict, overwrite: bool) -> Path:
    """The folder this build writes: ``root``, unless it holds another build, which is refused, or with
    ``overwrite`` left whole while the new build goes to ``.<name>.overwrite`` beside it (:func:`_publish` swaps
    them once the manifest is merged); a side folder of yet another build is an unfinished overwrite, started
    afresh."""
    changed = _differences(root, stamp)
    side = root.with_name(f".{root.name}.overwrite")
    if changed and not overwrite:
        raise UserError(f"{root} holds shards of another build ({'; '.join(changed)} differ from its "
                        f"{BUILD_STAMP}); rerun with the same settings, pick another name, or pass --overwrite "
                        f"(recbase shards) to replace them once the new build is complete")
    if not (overwrite and (changed or side.exists())):
        target = root
    else:
        target = side
        if _differences(side, stamp):
            shutil.rmtree(side)
    target.mkdir(parents=True, exist_ok=True)
    if not (target / BUILD_STAMP).exists():
        atomic_write_text(target / BUILD_STAMP, json.dumps(stamp, indent=2, sort_keys=True) + "\n")
    return target


def _publish(built: Path, root: Path) -> Path:
    """Put the complete build in ``built`` in place of ``root``: the old folder is renamed aside, the new one renamed
    in, then the old one deleted, so a crash at any point leaves the new build whole under a name a rerun finds."""
    old = root.with_name(f".{root.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if root.exists():
        root.rename(old)
    built.rename(root)
    if old.exists():
        shutil.rmtree(old)
    log.info("replaced %s with the new build", root)
    return root


def build_shards(cfg: ShardConfig, overwrite: bool = False) -> Path:
    """Build this task's shards (and, for task 0, the eval sets); merge the manifest once every task is done.

    The pretraining domains are read in slices of about ``slice_rows`` interactions
    (:mod:`recbase.data.user_slices`), so memory does not grow with the logs. Returns the shard folder
    ``<out_dir>/<name>``. A folder that holds another build is refused, or with ``overwrite`` replaced once the
    new build is complete: until then it is untouched, and the new build lies in ``.<name>.overwrite``, which
    this returns when the build has several tasks (:func:`merge_build` puts it in place).
    """
    from recbase.data.tables import IMPRESSIONS_FILE, INTERACTIONS_FILE

    check_ranges(cfg, {**SHARD_RANGES, "task_index": Range(0, cfg.num_tasks - 1)})
    codes = read_codes(cfg.codes_path, cfg.codebook_size)
    pretrain_dirs, heldout_dirs = select_domains(cfg)
    root = Path(cfg.out_dir) / plain_name(cfg.name, "shard set name", "<out_dir>/<name>/")
    stamp = _build_stamp(cfg, codes.tokenizer_hash, {"codes": Path(cfg.codes_path)} | {
        f"{d.name}/{name}": d / name for d in pretrain_dirs + heldout_dirs
        for name in (INTERACTIONS_FILE, IMPRESSIONS_FILE) if (d / name).exists()})
    target = _target(root, stamp, overwrite)
    n_slices = count_slices(pretrain_dirs, cfg.slice_rows)
    slices = user_slices(pretrain_dirs, codes, cfg.seed, cfg.task_index, cfg.num_tasks, n_slices,
                         target / f"{SLICES_DIR}-t{cfg.task_index:03d}")

    def eval_sets() -> dict:
        seen = sorted({d.name for d in heldout_dirs} & set(codes.tokenizer.get("train_domains") or []))
        if seen:
            log.warning("held-out domain(s) %s were among the tokenizer's training domains: their eval sets are not "
                        "zero-shot, and evaluation refuses them unless allow_seen_domains=true", ", ".join(seen))
        return {d.name: build_eval_set(d, codes, target / EVAL_DIR / f"{d.name}.parquet", cfg.eval, cfg.seed,
                                       [p.name for p in pretrain_dirs])
                for d in heldout_dirs}

    with contextlib.closing(slices):   # a failed build deletes its slice files too
        write_sequence_shards(cfg, codes.vocab, codes.tokenizer_hash, [d.name for d in pretrain_dirs], slices,
                              eval_sets, codes.tokenizer, n_slices, target)
    if target != root and cfg.num_tasks == 1:
        return _publish(target, root)
    return target


def merge_build(cfg: ShardConfig) -> Path:
    """Write ``manifest.json`` from the finished tasks' manifests (the final step of an array job); returns the
    shard folder. Where an overwrite is under way (``.<name>.overwrite``), its build is merged and put in place:
    with several tasks only this step does so, so that two tasks finishing together never both swap folders."""
    root = Path(cfg.out_dir) / plain_name(cfg.name, "shard set name", "<out_dir>/<name>/")
    side = root.with_name(f".{root.name}.overwrite")
    if side.exists():
        merge_manifests(side, cfg.num_tasks)
        return _publish(side, root)
    merge_manifests(root, cfg.num_tasks)
    return root


def write_sequence_shards(cfg: ShardConfig, vocab: Vocab, tokenizer_hash: str, domain_names: list[str],
                          slices: Iterable[list[DomainSequences]], eval_sets=dict, tokenizer: dict | None = None,
                          n_slices: int | None = None, root: Path | None = None) -> Path:
    """Lay out, write and describe the shards under ``<out_dir>/<name>``: everything the builder does after
    reading its inputs. ``slices`` gives, slice after slice, one :class:`DomainSequences` per domain of
    ``domain_names``; a user is in exactly one slice, and every user of a slice orders (by seeded hash) after
    every user of the slices before it. ``eval_sets()`` (task 0 only) builds the held-out domains' eval sets once
    the shards are written and returns their manifest entries. ``tokenizer`` is the artifact's metadata (kind,
    embedder, training domains) recorded in the manifest. ``root`` is the folder written (default
    ``<out_dir>/<name>``)."""
    t0 = time.perf_counter()
    root = root or Path(cfg.out_dir) / cfg.name
    root.mkdir(parents=True, exist_ok=True)
    skipped: Counter = Counter()
    splits = SPLITS if cfg.holdout else SPLITS[:1]
    for sp in splits:
        (root / sp).mkdir(exist_ok=True)
    files = _ShardFiles(cfg.workers)
    writers = [_SplitWriter(sp, cfg, vocab, domain_names, root, files) for sp in splits]
    try:
        with tqdm(slices, total=n_slices, desc="build shards", unit="slice") as bar:
            for seqs in bar:
                for s in seqs:
                    skipped.update({f"{s.domain}: {k}": v for k, v in s.skipped.items()})
                hashes = user_hashes(seqs, cfg.seed)
                item_tokens = (np.concatenate([s.item_tokens for s in seqs]) if seqs
                               else np.zeros((0, vocab.levels), token_dtype(vocab)))
                for w in writers:
                    w.add(order_users(w.split, seqs, hashes, cfg, vocab.levels, skipped), item_tokens)
                bar.set_postfix(tok_s=f"{sum(w.offset for w in writers) / (time.perf_counter() - t0):,.0f}",
                                refresh=False)
        for w in writers:
            w.finish()
    finally:
        files.close()

    shards, domains = [], {}
    for w in writers:
        for entry in w.shards:
            path = root / entry["path"]
            shards.append({**entry, "bytes": path.stat().st_size, "sha256": digest_path(path).read_text().strip()})
        for name, stats in w.domains.items():
            domains.setdefault(name, {})[w.split] = dict(stats)
    task = {"task_index": cfg.task_index, "num_tasks": cfg.num_tasks, "tokenizer_hash": tokenizer_hash,
            "tokenizer": tokenizer or {}, "vocab": vocab.to_dict(), "token_dtype": token_dtype(vocab).name,
            "shards": shards, "domains": domains, "eval_sets": eval_sets() if cfg.task_index == 0 else {},
            "skipped": dict(sorted(skipped.items())), "config": to_dict(cfg)}
    atomic_write_text(root / TASK_DIR / f"task-{cfg.task_index:03d}.json", json.dumps(task, indent=2) + "\n")
    n_tokens = sum(w.built_tokens for w in writers)
    elapsed = time.perf_counter() - t0
    log.info("task %d/%d: %d shards (%d already complete); wrote %s tokens in %.1fs (%.0f tokens/s)",
             cfg.task_index, cfg.num_tasks, len(shards), sum(w.kept for w in writers),
             f"{n_tokens:,}", elapsed, n_tokens / max(elapsed, 1e-9))
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
