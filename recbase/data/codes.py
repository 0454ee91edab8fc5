"""``codes.parquet``: each item's concept codes under one tokenizer, read and checked in one place.

Written by ``recbase tokenizer encode`` (docs/formats.md, "Codes"); read by the shard build, the eval-set build, the
in-domain runs and evaluation's retrieval. pyarrow is imported inside :func:`read_codes`, so importing this module
costs nothing on a machine that only trains.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from recbase.errors import UserError
from recbase.vocab import Vocab

if TYPE_CHECKING:
    import pyarrow as pa


@dataclass
class Codes:
    """The item -> concept code table of one tokenizer, split by domain."""

    tokenizer_hash: str
    vocab: Vocab
    by_domain: dict[str, tuple[pa.Array, np.ndarray]]   # domain -> (item ids, codes [n, L])
    tokenizer: dict = field(default_factory=dict)        # hash, kind, embedder, train_domains (None: not recorded)


def read_codes(path: str | Path, codebook_size: int = 0) -> Codes:
    """Read ``codes.parquet``; the vocabulary's K comes from ``codebook_size`` or the file's metadata."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: codes file not found (run `recbase tokenizer encode` first)")
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        raise UserError(f"{path}: not a readable Parquet file ({e}); write it again with `recbase tokenizer encode`"
                        ) from None
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    if "tokenizer_hash" not in meta:
        raise UserError(f"{path}: no 'tokenizer_hash' in the Parquet key-value metadata")
    for col in ("domain", "item_id", "codes"):
        if col not in table.column_names:
            raise UserError(f"{path}: missing column '{col}' (have {', '.join(table.column_names)})")
    lengths = pc.list_value_length(table["codes"]).to_numpy(zero_copy_only=False)
    if len(lengths) == 0:
        raise UserError(f"{path}: no rows")
    bad = np.flatnonzero(lengths != lengths[0])
    if len(bad):
        raise UserError(f"{path}: row {bad[0]}, field 'codes': {lengths[bad[0]]} codes, row 0 has {lengths[0]}")
    levels = int(lengths[0])
    codes = pc.list_flatten(table["codes"]).to_numpy(zero_copy_only=False).astype(np.int64).reshape(-1, levels)
    k = codebook_size or int(meta.get("codebook_size", 0))
    if not k:
        raise UserError(f"{path}: no 'codebook_size' in the metadata; set codebook_size in the shard config")
    bad = np.flatnonzero((codes < 0).any(1) | (codes >= k).any(1))
    if len(bad):
        raise UserError(f"{path}: row {bad[0]}, field 'codes': {codes[bad[0]].tolist()} outside [0, {k})")
    vocab = Vocab(levels=levels, codebook_size=k)
    domains = table["domain"].to_numpy(zero_copy_only=False)
    by_domain = {}
    for d in sorted(set(domains.tolist())):
        rows = np.flatnonzero(domains == d)
        by_domain[d] = (table["item_id"].take(pa.array(rows)).combine_chunks(), codes[rows])
    tokenizer = {"hash": meta["tokenizer_hash"], "kind": meta.get("tokenizer_kind"), "embedder": meta.get("embedder"),
                 "train_domains": json.loads(meta["train_domains"]) if "train_domains" in meta else None}
    return Codes(meta["tokenizer_hash"], vocab, by_domain, tokenizer)


def read_tokenizer_hash(path: str | Path) -> str:
    """The ``tokenizer_hash`` of ``codes.parquet`` from its metadata alone (no rows are read)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    try:
        meta = pq.read_schema(path).metadata or {}
    except (pa.ArrowException, OSError) as e:
        raise UserError(f"{path}: not a readable Parquet file ({e}); write it again with `recbase tokenizer encode`"
                        ) from None
    if b"tokenizer_hash" not in meta:
        raise UserError(f"{path}: no 'tokenizer_hash' in the Parquet key-value metadata; write it again with "
                        f"`recbase tokenizer encode`")
    return meta[b"tokenizer_hash"].decode()


def read_catalog(path: str | Path, domain: str, vocab: Vocab) -> tuple[list[str], np.ndarray]:
    """One domain's item ids and codes ``[N, L]``, checked against a model's vocabulary (evaluation's retrieval)."""
    codes = read_codes(path, vocab.codebook_size)
    if codes.vocab.levels != vocab.levels:
        raise UserError(f"{path}: field 'codes' has {codes.vocab.levels} entries per item, the model's vocabulary "
                        f"has {vocab.levels} levels")
    if domain not in codes.by_domain:
        raise UserError(f"{path}: no items of domain {domain!r}")
    item_ids, item_codes = codes.by_domain[domain]
    return item_ids.to_pylist(), item_codes
