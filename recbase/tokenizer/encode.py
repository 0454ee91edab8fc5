"""``recbase tokenizer encode``: every domain of a data folder → one ``codes.parquet``.

Training domains use the statistics stored in the artifact; any other domain is normalised with statistics
computed from its own catalog, then encoded by the artifact as is.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recbase.data.codes import read_tokenizer_hash
from recbase.errors import UserError
from recbase.io import atomic_path
from recbase.tokenizer.artifact import Tokenizer
from recbase.tokenizer.collisions import collision_rate
from recbase.tokenizer.embed import load_embeddings, read_texts, select_domains

log = logging.getLogger(__name__)

CODES_SCHEMA = pa.schema([("domain", pa.string()), ("item_id", pa.string()), ("codes", pa.list_(pa.int32()))])


def encode_domains(tok: Tokenizer, data_dir: str | Path, emb_dir: str | Path,
                   domains: list[str] | None = None) -> dict[str, tuple[list[str], np.ndarray]]:
    """``{domain: (item_ids, codes [N, code_width])}`` for the domains of ``data_dir``."""
    out = {}
    for domain_dir in select_domains(data_dir, domains):
        ids, texts = read_texts(domain_dir)
        emb, meta = load_embeddings(emb_dir, domain_dir.name, ids, texts)
        if meta["model"] != tok.embedder:
            raise UserError(f"{emb_dir}/{domain_dir.name}.json: embedded with {meta['model']!r}, but the tokenizer "
                            f"was trained on {tok.embedder!r} embeddings")
        start = time.perf_counter()
        codes = tok.encode_catalog(emb, tok.stats_for(domain_dir.name, emb), domain_dir.name)
        seen = "trained on" if domain_dir.name in tok.domain_stats else "unseen"
        log.info("encode %s (%s): %d items in %.2fs, collision rate %.2f%%", domain_dir.name, seen, len(ids),
                 time.perf_counter() - start, 100 * collision_rate(codes[:, :tok.levels]))
        out[domain_dir.name] = (ids, codes)
    return out


def codes_table(tok: Tokenizer, encoded: dict[str, tuple[list[str], np.ndarray]]) -> pa.Table:
    domains, ids, codes = [], [], []
    for domain, (item_ids, c) in encoded.items():
        domains += [domain] * len(item_ids)
        ids += item_ids
        codes += c.astype(np.int32).tolist()
    table = pa.table({"domain": domains, "item_id": ids, "codes": codes}, schema=CODES_SCHEMA)
    return table.replace_schema_metadata({"tokenizer_hash": tok.hash, "levels": str(tok.levels),
                                          "codebook_size": str(tok.codebook_size),
                                          "code_width": str(tok.code_width), "tokenizer_kind": tok.kind,
                                          "embedder": tok.embedder,
                                          "train_domains": json.dumps(tok.train_domains)})


def write_codes(tok: Tokenizer, data_dir: str | Path, emb_dir: str | Path, out_path: str | Path,
                domains: list[str] | None = None, overwrite: bool = False) -> pa.Table:
    """Encode the domains and write ``codes.parquet`` atomically; returns the table.

    A file already at ``out_path`` that is not this tokenizer's codes is replaced only with ``overwrite``: shards
    and eval sets built from it name its tokenizer."""
    out_path = Path(out_path)
    if out_path.exists() and not overwrite:
        try:
            old = read_tokenizer_hash(out_path)
        except UserError:
            old = None
        if old != tok.hash:
            what = f"codes of tokenizer {old}" if old else "a file that is not a codes table"
            raise UserError(f"{out_path}: already holds {what}, not of this tokenizer ({tok.hash}); choose another "
                            f"--out, or pass --overwrite to replace it")
    table = codes_table(tok, encode_domains(tok, data_dir, emb_dir, domains))
    with atomic_path(out_path) as tmp:
        pq.write_table(table, tmp)
    return table

