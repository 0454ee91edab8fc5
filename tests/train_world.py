"""Demo-world shards for the training tests and the pretraining benchmark.

Tables come from the seeded demo world (``recbase.data.synthetic``: topic drift, shared topic transitions, Zipf
popularity, so there is something to learn); item codes are seeded random tuples (the trainer only sees token
ids, so no tokenizer needs to be trained); shards are built by the real shard builder.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

LEVELS, K = 4, 64
TOKENIZER_HASH = "train-test-tokenizer"


def write_random_codes(data_dir: Path, out: Path, seed: int = 0) -> Path:
    """``codes.parquet`` giving every item of every domain in ``data_dir`` a seeded random code tuple."""
    rng = np.random.default_rng(seed)
    rows = {"domain": [], "item_id": [], "codes": []}
    for domain_dir in sorted(p for p in data_dir.iterdir() if (p / "items.parquet").exists()):
        items = pq.read_table(domain_dir / "items.parquet", columns=["item_id"])["item_id"].to_pylist()
        rows["domain"] += [domain_dir.name] * len(items)
        rows["item_id"] += items
        rows["codes"] += rng.integers(0, K, size=(len(items), LEVELS)).tolist()
    table = pa.table({"domain": pa.array(rows["domain"], pa.string()), "item_id": pa.array(rows["item_id"]),
                      "codes": pa.array(rows["codes"], pa.list_(pa.int32()))})
    meta = {"tokenizer_hash": TOKENIZER_HASH, "codebook_size": str(K), "tokenizer_kind": "random",
            "embedder": "none", "train_domains": json.dumps(["books", "movies"])}
    pq.write_table(table.replace_schema_metadata(meta), out)
    return out


def make_train_shards(root: Path, users_per_domain: int = 250, items_per_domain: int = 200, seed: int = 0,
                      domains=("movies", "books", "games")) -> Path:
    """Generate the world under ``root`` and build shards; returns the shard folder (``root/shards/demo``)."""
    from recbase.data.synthetic import generate_world

    generate_world(root / "data", seed=seed, domains=list(domains), users_per_domain=users_per_domain,
                   items_per_domain=items_per_domain)
    write_random_codes(root / "data", root / "codes.parquet", seed)
    return build_domain_shards(root, "demo", [], seed)


def build_domain_shards(root: Path, name: str, domains: list[str], seed: int = 0) -> Path:
    """Shards ``root/shards/<name>`` of the world under ``root`` (``domains`` empty = all of them)."""
    from recbase.data.shards import ShardConfig, build_shards

    cfg = ShardConfig(data_dir=str(root / "data"), domains=list(domains), codes_path=str(root / "codes.parquet"),
                      out_dir=str(root / "shards"), name=name, tokens_per_shard=20_000, tokens_per_block=4_096,
                      holdout=1, seed=seed)
    return build_shards(cfg)
