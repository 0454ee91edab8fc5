"""Eval sets for held-out domains (per user a history, held-out positives and sampled negatives): written, read
and checked here.

Layout (docs/formats.md): ``eval/<domain>.parquet``, one row per user with ``user_id``, ``history`` (token ids,
``bos`` first, no ``eos``), ``candidates`` (item ids), ``candidate_tokens`` (L tokens each), ``labels`` (1 = held
out positive, 0 = negative) and ``target`` (the next item after the history, for leave-one-out retrieval).

The positives are each user's last ``positives`` items. Negatives are the dataset's real non-clicks when an
``impressions.parquet`` (``user_id, item_id, label``: 1 clicked, 0 not, null unlabelled; the MIND reader writes
it) lies beside the tables (MIND), otherwise items drawn
uniformly outside everything the user interacted with, from a pool: by default the items that occur in the
domain's interactions (the usual sampled-negatives protocol), or the whole catalog. A catalog can hold far more
items than anyone ever touched (H&M: 105,542 articles, 17,986 ever bought); negatives from the untouched tail are
trivially easy for popularity and text similarity and would flatter every scorer. Users are taken in a seeded
random order until the domain's pair budget is spent, so the set is a fixed, unbiased sample of users.
"""
from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from recbase.data.codes import Codes
from recbase.data.sequences import (assemble, domain_codes, group_users, interaction_batches, item_tokens,
                                    stable_hash)
from recbase.errors import UserError
from recbase.io import atomic_path

if TYPE_CHECKING:
    import pyarrow as pa

    from recbase.vocab import Vocab

log = logging.getLogger(__name__)

MAX_POSITIVES = 10
COLUMNS = ("user_id", "history", "candidates", "candidate_tokens", "labels", "target")


@dataclass
class EvalSetConfig:
    """Options of the eval sets written for held-out domains (the ``eval`` section of the shard config)."""

    positives: int = 1                 # last items of each user held out as positives (1..10)
    negatives_per_positive: int = 10   # negatives sampled per positive (the reports' protocol: 1 + 10 per user)
    negative_pool: str = "interacted"  # interacted (items someone in the domain interacted with) or catalog
    max_pairs: int = 20_000            # (user, candidate) pairs per domain at most


def schema() -> pa.Schema:
    """The eval-set columns and types (pyarrow is imported here: the shard build imports this module for its
    config, and the synthetic shards are written on machines without pyarrow)."""
    import pyarrow as pa

    return pa.schema([
        ("user_id", pa.string()),
        ("history", pa.list_(pa.int32())),
        ("candidates", pa.list_(pa.string())),
        ("candidate_tokens", pa.list_(pa.list_(pa.int32()))),
        ("labels", pa.list_(pa.int8())),
        ("target", pa.string()),
    ])


def _non_clicks(domain_dir: Path, item_ids: pa.Array) -> dict[str, np.ndarray] | None:
    """Catalog rows of each user's real non-clicked impressions, or None when the domain has no impressions."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from recbase.data.tables import read_impressions

    table = read_impressions(domain_dir)
    if table is None:
        return None
    table = table.filter(pc.fill_null(pc.equal(pc.cast(table["label"], pa.int8()), 0), False))
    rows = pc.index_in(table["item_id"], value_set=item_ids)
    table = table.filter(rows.is_valid()).append_column("row", rows.filter(rows.is_valid()))
    table = table.sort_by([("user_id", "ascending"), ("row", "ascending")])
    users = table["user_id"].to_pylist()
    item_rows = table["row"].to_numpy()
    out: dict[str, list] = {}
    for u, r in zip(users, item_rows):
        out.setdefault(u, []).append(int(r))
    return {u: np.unique(np.asarray(r, np.int64)) for u, r in out.items()}


NEGATIVE_POOLS = ("interacted", "catalog")


def sample_uniform_negatives(rng: np.random.Generator, pool: np.ndarray, exclude: np.ndarray, k: int) -> np.ndarray:
    """``k`` distinct catalog rows drawn uniformly from ``pool`` (sorted, distinct rows) minus ``exclude`` (fewer
    if too few)."""
    exclude = np.unique(exclude)
    n_excluded = int(np.isin(exclude, pool, assume_unique=True).sum())
    if len(pool) - n_excluded <= 4 * k:
        left = np.setdiff1d(pool, exclude, assume_unique=True)
        return rng.choice(left, size=min(k, len(left)), replace=False)
    picked: list[int] = []
    seen = set(exclude.tolist())
    while len(picked) < k:
        for r in pool[rng.integers(0, len(pool), size=2 * k)].tolist():
            if r not in seen:
                seen.add(r)
                picked.append(r)
                if len(picked) == k:
                    break
    return np.asarray(picked, np.int64)


def build_eval_set(domain_dir: str | Path, codes: Codes, out_path: str | Path, cfg: EvalSetConfig,
                   seed: int, pretrain_domains: list[str] = ()) -> dict:
    """Write the eval set of one held-out domain to ``out_path`` (skipped when it exists); returns its counts.

    Its metadata records the tokenizer hash and the domains the tokenizer (from ``codes``) and the shards built
    beside it (``pretrain_domains``) were made from; evaluation checks the hash and the tokenizer's domains."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    domain_dir, out_path = Path(domain_dir), Path(out_path)
    if not 1 <= cfg.positives <= MAX_POSITIVES:
        raise ValueError(f"eval.positives must be in 1..{MAX_POSITIVES}, got {cfg.positives}")
    if cfg.negatives_per_positive < 1:
        raise ValueError(f"eval.negatives_per_positive must be >= 1, got {cfg.negatives_per_positive}")
    if cfg.negative_pool not in NEGATIVE_POOLS:
        raise ValueError(f"eval.negative_pool must be one of {', '.join(NEGATIVE_POOLS)}, got {cfg.negative_pool!r}")
    if out_path.exists():
        return _stats(pq.read_table(out_path), out_path, Counter())
    vocab = codes.vocab
    item_ids, item_codes = domain_codes(domain_dir, codes)
    item_id_list = item_ids.to_pylist()
    cand_tokens = vocab.encode_codes(item_codes).astype(np.int32)
    impressions = _non_clicks(domain_dir, item_ids)
    skipped: Counter = Counter()
    user_ids, counts, interacted = _users(domain_dir, item_ids, skipped)
    negative_rows = interacted if cfg.negative_pool == "interacted" else np.arange(len(item_id_list), dtype=np.int64)
    rng = np.random.default_rng([seed, stable_hash(domain_dir.name)])
    n_pos, n_neg = cfg.positives, cfg.positives * cfg.negatives_per_positive
    eligible = np.flatnonzero(counts > n_pos)
    if len(eligible) < len(counts):
        skipped[f"users with <= {n_pos} interactions"] += len(counts) - len(eligible)
    rows = {name: [] for name in COLUMNS}
    pairs = 0
    # the budget is spent after about max_pairs / (1 + negatives) users: their histories are read that many at a time
    chunk = 2 * cfg.max_pairs // (n_pos + n_neg) + 1
    users = _histories(domain_dir, item_ids, item_tokens(vocab, item_codes), user_ids, rng.permutation(eligible),
                       chunk)
    for user, seen, tokens in users:
        count = len(seen)
        pos = seen[count - n_pos:]
        if impressions is None:
            neg = sample_uniform_negatives(rng, negative_rows, seen, n_neg)
        else:
            pool = np.setdiff1d(impressions.get(user, np.zeros(0, np.int64)), seen)
            neg = rng.choice(pool, size=min(n_neg, len(pool)), replace=False)
        if len(neg) < n_neg:
            skipped["users with fewer negatives available than asked"] += 1
            if len(neg) == 0:
                continue
        if pairs + len(pos) + len(neg) > cfg.max_pairs:
            break
        pairs += len(pos) + len(neg)
        history, _ = assemble(tokens, np.array([0]), np.array([count - n_pos]), np.array([False]), vocab,
                              np.dtype(np.int32))
        cands = np.concatenate([pos, neg])
        rows["user_id"].append(user)
        rows["history"].append(history)
        rows["candidates"].append([item_id_list[c] for c in cands])
        rows["candidate_tokens"].append(cand_tokens[cands].tolist())
        rows["labels"].append([1] * len(pos) + [0] * len(neg))
        rows["target"].append(item_id_list[pos[0]])
    table = pa.table({"user_id": pa.array(rows["user_id"], pa.string()),
                      "history": pa.array([h.tolist() for h in rows["history"]], pa.list_(pa.int32())),
                      "candidates": rows["candidates"], "candidate_tokens": rows["candidate_tokens"],
                      "labels": rows["labels"], "target": rows["target"]},
                     schema=schema().with_metadata({
                         "negatives": f"uniform-{cfg.negative_pool}" if impressions is None else "impressions",
                         "seed": str(seed), "tokenizer_hash": codes.tokenizer_hash,
                         "tokenizer_train_domains": json.dumps(codes.tokenizer.get("train_domains")),
                         "shard_domains": json.dumps(sorted(pretrain_domains))}))
    with atomic_path(out_path) as tmp:
        pq.write_table(table, tmp)
    stats = _stats(table, out_path, skipped)
    log.info("eval set %s: %d users, %d pairs (%s negatives)", domain_dir.name, stats["users"], stats["pairs"],
             stats["negatives"])
    return stats


def _users(domain_dir: Path, item_ids: pa.Array, skipped: Counter) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Every user of a domain in user id order with their number of interactions (items with codes), and the
    catalog rows that occur in them, from one pass over the interactions in batches."""
    import pyarrow.compute as pc

    counts: dict[str, int] = {}
    used = np.zeros(len(item_ids), bool)
    for table in interaction_batches(domain_dir, item_ids, skipped):
        per_user = pc.value_counts(table["user_id"].combine_chunks())
        for user, n in zip(per_user.field("values").to_pylist(), per_user.field("counts").to_pylist()):
            counts[user] = counts.get(user, 0) + n
        used[table["row"].to_numpy()] = True
    user_ids = sorted(counts)
    return user_ids, np.fromiter((counts[u] for u in user_ids), np.int64, len(user_ids)), np.flatnonzero(used)


def _histories(domain_dir: Path, item_ids: pa.Array, tokens: np.ndarray, user_ids: list[str], order: np.ndarray,
               chunk: int) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """(user id, catalog rows, item tokens) of the users ``order`` (indices into ``user_ids``), each history in
    time order; every ``chunk`` users cost one pass over the interactions, so memory holds ``chunk`` histories."""
    import pyarrow as pa
    import pyarrow.compute as pc

    for a in range(0, len(order), chunk):
        wanted = [user_ids[u] for u in order[a:a + chunk]]
        value_set = pa.array(wanted, pa.string())
        parts = [t.filter(pc.is_in(t["user_id"], value_set=value_set))
                 for t in interaction_batches(domain_dir, item_ids, Counter())]
        seqs = group_users(domain_dir.name, pa.concat_tables(parts), tokens, Counter())
        where = dict(zip(seqs.user_ids, zip(seqs.starts.tolist(), seqs.counts.tolist())))
        for user in wanted:
            start, count = where[user]
            yield user, seqs.item_rows[start:start + count], seqs.item_tokens[start:start + count]


def _stats(table: pa.Table, path: Path, skipped: Counter) -> dict:
    import pyarrow.compute as pc

    labels = pc.list_flatten(table["labels"]).to_numpy(zero_copy_only=False)
    meta = table.schema.metadata or {}
    return {"path": f"{path.parent.name}/{path.name}", "users": table.num_rows, "pairs": int(len(labels)),
            "positives": int(labels.sum()), "negatives": meta.get(b"negatives", b"?").decode(),
            "skipped": dict(skipped)}


@dataclass
class EvalSet:
    """One held-out domain: per user a history, candidates with their tokens and labels, and the target."""

    domain: str
    path: Path
    user_ids: list[str]
    histories: list[np.ndarray]          # [T] int64, bos first
    candidates: list[list[str]]
    candidate_tokens: list[np.ndarray]   # [C, L] int64
    labels: list[np.ndarray]             # [C] int8
    targets: list[str]

    def __len__(self) -> int:
        return len(self.user_ids)

    @property
    def n_pairs(self) -> int:
        return sum(len(c) for c in self.candidates)

    def flat(self, per_user: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(user index, score, label) over all pairs, for pooled AUC and GAUC."""
        groups = np.repeat(np.arange(len(self)), [len(c) for c in self.candidates])
        return groups, np.concatenate(per_user), np.concatenate(self.labels)


def read_eval_set(path: str | Path, vocab: Vocab, max_users: int = 0) -> EvalSet:
    """Read and validate ``eval/<domain>.parquet`` (layout in docs/formats.md) against the model's vocabulary."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    levels, bos_id = vocab.levels, vocab.bos_id
    level_lo = np.array([vocab.level_range(level)[0] for level in range(levels)])
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        raise UserError(f"{path}: not a readable Parquet file ({e}); rebuild the eval set with `recbase shards`"
                        ) from None
    missing = [c for c in COLUMNS if c not in table.column_names]
    if missing:
        raise UserError(f"{path}: missing column(s) {', '.join(missing)}")
    if max_users:
        table = table.slice(0, max_users)
    cols = {c: table.column(c).to_pylist() for c in COLUMNS}
    out = EvalSet(path.stem, path, [], [], [], [], [], [])
    for row in range(table.num_rows):
        def bad(field: str, why: str) -> UserError:
            return UserError(f"{path}: row {row} (user {cols['user_id'][row]!r}): field {field!r} {why}")

        history = np.asarray(cols["history"][row] or [], dtype=np.int64)
        if len(history) == 0 or history[0] != bos_id:
            raise bad("history", f"must start with bos ({bos_id})")
        if (len(history) - 1) % levels:
            raise bad("history", f"has {len(history) - 1} tokens after bos, not a multiple of {levels} levels")
        cands = cols["candidates"][row] or []
        tokens = cols["candidate_tokens"][row] or []
        labels = np.asarray(cols["labels"][row] or [], dtype=np.int8)
        if not cands:
            raise bad("candidates", "is empty")
        if len(tokens) != len(cands) or len(labels) != len(cands):
            raise bad("candidate_tokens/labels", f"lengths {len(tokens)}/{len(labels)} differ from "
                      f"{len(cands)} candidates")
        if any(t is None or len(t) != levels for t in tokens):
            raise bad("candidate_tokens", f"has an entry that is not {levels} tokens")
        token_array = np.asarray(tokens, dtype=np.int64)
        if ((token_array < level_lo) | (token_array >= level_lo + vocab.codebook_size)).any():
            raise bad("candidate_tokens", f"has a token outside its level's range (vocabulary: {levels} levels "
                      f"of {vocab.codebook_size} codes after {vocab.n_special} specials)")
        if not np.isin(labels, (0, 1)).all():
            raise bad("labels", "holds values other than 0 and 1")
        target = cols["target"][row]
        if target is None:
            raise bad("target", "is null")
        out.user_ids.append(str(cols["user_id"][row]))
        out.histories.append(history)
        out.candidates.append([str(c) for c in cands])
        out.candidate_tokens.append(token_array)
        out.labels.append(labels)
        out.targets.append(str(target))
    if not len(out):
        raise UserError(f"{path}: no users")
    return out


def read_metadata(path: Path) -> dict[str, str]:
    """The eval set's Parquet key-value metadata (no rows are read)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        meta = pq.read_schema(path).metadata or {}
    except (pa.ArrowException, OSError) as e:
        raise UserError(f"{path}: not a readable Parquet file ({e}); rebuild the eval set with `recbase shards`"
                        ) from None
    return {k.decode(): v.decode() for k, v in meta.items()}


def eval_set_tokenizer_hash(path: Path) -> str:
    """The hash of the tokenizer the eval set's tokens come from."""
    digest = read_metadata(path).get("tokenizer_hash")
    if not digest:
        raise UserError(f"{path}: no tokenizer_hash in the Parquet metadata, so the model's tokenizer cannot be "
                        f"checked against it; rebuild the eval set with `recbase shards`")
    return digest


def eval_set_training_domains(path: Path) -> tuple[list[str] | None, list[str] | None]:
    """(domains the tokenizer was trained on, pretraining domains of the shards built beside it), as recorded in
    the eval set's metadata when it was built; ``None`` where the builder did not know."""
    meta = read_metadata(path)

    def listed(key: str) -> list[str] | None:
        return json.loads(meta[key]) if key in meta else None
    return listed("tokenizer_train_domains"), listed("shard_domains")
