"""Shards of synthetic users of realistic shape, written straight from arrays: no tables, no tokenizer.

For throughput measurements on a machine that has PyTorch and little else (the GPU suite,
``launch/bench/gpu_suite.py``, makes its pretraining data this way). Only the shape is realistic, not the
content: history lengths are log-normal in items (median ``median_items``, clipped to ``[min_items,
max_items]``), as interaction logs are; items are drawn with Zipf popularity from a catalog whose code tuples are
uniform over the K codes of every level. The shard layout, tar files, manifest and loader are the real ones
(``recbase.data.shards.write_sequence_shards``). The demo world (``recbase.data.synthetic``) is the synthetic
data with something to learn; this is the one without Parquet.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from recbase.data.sequences import DomainSequences
from recbase.data.shard_format import token_dtype
from recbase.data.shards import ShardConfig, write_sequence_shards
from recbase.vocab import Vocab

TOKENIZER_HASH = "synthetic-random-codes"


def synthetic_sequences(vocab: Vocab, n_users: int, n_items: int = 100_000, median_items: float = 40.0,
                        min_items: int = 5, max_items: int = 500, seed: int = 0,
                        domain: str = "synthetic") -> DomainSequences:
    """One domain of ``n_users`` users over a catalog of ``n_items`` random code tuples."""
    if min_items < 3:
        raise ValueError(f"min_items={min_items}: a user needs at least 3 items (train, valid and test targets)")
    rng = np.random.default_rng(seed)
    catalog = rng.integers(0, vocab.codebook_size, size=(n_items, vocab.levels))
    item_tokens = vocab.encode_codes(catalog).astype(token_dtype(vocab))
    counts = np.clip(np.rint(median_items * rng.lognormal(0.0, 1.0, n_users)), min_items, max_items).astype(np.int64)
    popularity = 1.0 / np.arange(1, n_items + 1)
    item_rows = rng.choice(n_items, size=int(counts.sum()), p=popularity / popularity.sum()).astype(np.int64)
    starts = np.cumsum(counts) - counts
    return DomainSequences(domain, [f"u{i}" for i in range(n_users)], starts, counts, item_tokens[item_rows],
                           item_rows, Counter())


def write_synthetic_shards(out_dir: str | Path, name: str, vocab: Vocab, n_users: int, seed: int = 0,
                           tokens_per_shard: int = 2_000_000, **shape) -> Path:
    """Write ``<out_dir>/<name>`` (train and valid shards, manifest) of :func:`synthetic_sequences`."""
    cfg = ShardConfig(data_dir="", codes_path="", out_dir=str(out_dir), name=name, tokens_per_shard=tokens_per_shard,
                      seed=seed)
    seqs = [synthetic_sequences(vocab, n_users, seed=seed, **shape)]
    return write_sequence_shards(cfg, vocab, TOKENIZER_HASH, [s.domain for s in seqs], [seqs])
