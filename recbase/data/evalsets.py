"""Eval sets for held-out domains: per user a history, held-out positives and sampled negatives.

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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from recbase.data.codes import Codes
from recbase.data.sequences import assemble, load_domain, stable_hash
from recbase.io import atomic_path

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger(__name__)

IMPRESSIONS_FILE = "impressions.parquet"   # beside the tables when the dataset has real non-clicks (MIND)
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
    import pyarrow.parquet as pq

    path = domain_dir / IMPRESSIONS_FILE
    if not path.exists():
        return None
    table = pq.read_table(path)
    for col in ("user_id", "item_id", "label"):
        if col not in table.column_names:
            raise ValueError(f"{path}: missing column '{col}' (have {', '.join(table.column_names)})")
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
    seqs = load_domain(domain_dir, codes)
    vocab = codes.vocab
    item_ids, item_codes = codes.by_domain[seqs.domain]
    item_id_list = item_ids.to_pylist()
    cand_tokens = vocab.encode_codes(item_codes).astype(np.int32)
    impressions = _non_clicks(domain_dir, item_ids)
    negative_rows = (np.unique(seqs.item_rows) if cfg.negative_pool == "interacted"
                     else np.arange(len(item_id_list), dtype=np.int64))
    rng = np.random.default_rng([seed, stable_hash(seqs.domain)])
    n_pos, n_neg = cfg.positives, cfg.positives * cfg.negatives_per_positive
    skipped = Counter(seqs.skipped)
    eligible = np.flatnonzero(seqs.counts > n_pos)
    if len(eligible) < len(seqs.counts):
        skipped[f"users with <= {n_pos} interactions"] += len(seqs.counts) - len(eligible)
    rows = {name: [] for name in COLUMNS}
    pairs = 0
    for u in rng.permutation(eligible):
        start, count = int(seqs.starts[u]), int(seqs.counts[u])
        seen = seqs.item_rows[start:start + count]
        pos = seen[count - n_pos:]
        if impressions is None:
            neg = sample_uniform_negatives(rng, negative_rows, seen, n_neg)
        else:
            pool = np.setdiff1d(impressions.get(seqs.user_ids[u], np.zeros(0, np.int64)), seen)
            neg = rng.choice(pool, size=min(n_neg, len(pool)), replace=False)
        if len(neg) < n_neg:
            skipped["users with fewer negatives available than asked"] += 1
            if len(neg) == 0:
                continue
        if pairs + len(pos) + len(neg) > cfg.max_pairs:
            break
        pairs += len(pos) + len(neg)
        history, _ = assemble(seqs.item_tokens, np.array([start]), np.array([count - n_pos]), np.array([False]),
                              vocab, np.dtype(np.int32))
        cands = np.concatenate([pos, neg])
        rows["user_id"].append(seqs.user_ids[u])
        rows["history"].append(history)
        rows["candidates"].append([item_id_list[c] for c in cands])
        rows["candidate_tokens"].append(cand_tokens[cands].tolist())
        rows["labels"].append([1] * len(pos) + [0] * len(neg))
        rows["target"].append(item_id_list[pos[0]])
    table = pa.table({"user_id": pa.array(rows["user_id"], pa.string()),
                      "history": pa.array([h.tolist() for h in rows["history"]], pa.list_(pa.int32())),
                      "candidates": rows["candidates"], "candidate_tokens": rows["candidate_tokens"],
                      "labels": rows["labels"], "target": rows["target"]},
                     schema=schema().with_metadata({"negatives": f"uniform-{cfg.negative_pool}" if impressions is None
                                                  else "impressions",
                                                  "seed": str(seed), "tokenizer_hash": codes.tokenizer_hash,
                                                  "tokenizer_train_domains":
                                                      json.dumps(codes.tokenizer.get("train_domains")),
                                                  "shard_domains": json.dumps(sorted(pretrain_domains))}))
    with atomic_path(out_path) as tmp:
        pq.write_table(table, tmp)
    stats = _stats(table, out_path, skipped)
    log.info("eval set %s: %d users, %d pairs (%s negatives)", seqs.domain, stats["users"], stats["pairs"],
             stats["negatives"])
    return stats


def _stats(table: pa.Table, path: Path, skipped: Counter) -> dict:
    import pyarrow.compute as pc

    labels = pc.list_flatten(table["labels"]).to_numpy(zero_copy_only=False)
    meta = table.schema.metadata or {}
    return {"path": f"{path.parent.name}/{path.name}", "users": table.num_rows, "pairs": int(len(labels)),
            "positives": int(labels.sum()), "negatives": meta.get(b"negatives", b"?").decode(),
            "skipped": dict(skipped)}


def read_eval_set(path: str | Path) -> pa.Table:
    """Load an eval set, checking its columns against the documented schema."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    missing = [n for n in COLUMNS if n not in table.column_names]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)}")
    return table
