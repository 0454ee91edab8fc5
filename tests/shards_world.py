"""A small world of tables and codes for the shard, loader and eval-set tests (random codes, fake tokenizer hash)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recbase.data.tables import DomainTables, IngestSummary, make_interactions_table, make_items_table, write_domain

LEVELS, K = 4, 64
TOKENIZER_HASH = "test-tokenizer-0001"


def make_world(root: Path, domains=("books", "movies", "news"), n_users=60, n_items=80, seed=0) -> Path:
    """Write <root>/data/<domain>/ tables and <root>/codes.parquet; returns root."""
    rng = np.random.default_rng(seed)
    code_rows = {"domain": [], "item_id": [], "codes": []}
    for d, domain in enumerate(domains):
        items = [f"{domain[0]}{i:04d}" for i in range(n_items)]
        users, inter_items, ts = [], [], []
        for u in range(n_users):
            n = int(rng.integers(3, 40)) if u % 7 else int(rng.integers(60, 120))  # a few long users
            users += [f"u{d}_{u:03d}"] * n
            inter_items += rng.choice(items, size=n).tolist()
            ts += sorted(rng.integers(0, 10_000, size=n).tolist())
        # Shuffle the rows: the builder must sort by (user, time) itself.
        perm = rng.permutation(len(users))
        tables = DomainTables(domain, make_items_table(domain, items, [f"Describe: {i}" for i in items]),
                              make_interactions_table(domain, [users[i] for i in perm], [inter_items[i] for i in perm],
                                                      [ts[i] for i in perm]), IngestSummary(domain))
        write_domain(tables, root / "data")
        code_rows["domain"] += [domain] * n_items
        code_rows["item_id"] += items
        code_rows["codes"] += rng.integers(0, K, size=(n_items, LEVELS)).tolist()
    table = pa.table({"domain": pa.array(code_rows["domain"], pa.string()),
                      "item_id": pa.array(code_rows["item_id"], pa.string()),
                      "codes": pa.array(code_rows["codes"], pa.list_(pa.int32()))})
    table = table.replace_schema_metadata({"tokenizer_hash": TOKENIZER_HASH, "codebook_size": str(K)})
    pq.write_table(table, root / "codes.parquet")
    return root


def expected_sequences(root: Path, domain: str, holdout: int) -> dict[str, list[int]]:
    """Train token sequences computed directly from the tables, independently of the builder."""
    from recbase.vocab import Vocab

    vocab = Vocab(LEVELS, K)
    codes = pq.read_table(root / "codes.parquet").to_pylist()
    tok = {r["item_id"]: [vocab.n_special + lvl * K + c for lvl, c in enumerate(r["codes"])]
           for r in codes if r["domain"] == domain}
    rows = pq.read_table(root / "data" / domain / "interactions.parquet").to_pylist()
    hist: dict[str, list] = {}
    for r in sorted(rows, key=lambda r: (r["user_id"], r["timestamp"])):
        hist.setdefault(r["user_id"], []).append(r["item_id"])
    out = {}
    for user, items in hist.items():
        if len(items) <= 2 * holdout:
            continue
        kept = items[:len(items) - 2 * holdout]
        seq = [vocab.bos_id] + [t for i in kept for t in tok[i]]
        if holdout == 0:
            seq.append(vocab.eos_id)
        out[user] = seq
    return out
