"""Users' chronological histories as item tokens: one domain's interactions mapped through the codes, and the
flat ``bos, item tokens..., [eos]`` arrays the shards and eval sets are cut from (docs/formats.md, "Vocabulary")."""
from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recbase.data.codes import Codes
from recbase.data.shard_format import token_dtype
from recbase.errors import UserError
from recbase.vocab import Vocab


@dataclass
class DomainSequences:
    """One domain's kept interactions as item tokens, grouped by user in chronological order."""

    domain: str
    user_ids: list[str]        # one per user
    starts: np.ndarray         # int64 [n_users]: first row of the user in item_tokens
    counts: np.ndarray         # int64 [n_users]: the user's number of kept interactions
    item_tokens: np.ndarray    # [n_interactions, L] in the shard token dtype (uint16 for the paper's vocabulary)
    item_rows: np.ndarray      # int64 [n_interactions]: row of the item in the domain's codes
    skipped: Counter


def load_domain(domain_dir: Path, codes: Codes) -> DomainSequences:
    """Map a domain's interactions to item tokens; interactions of items without codes are skipped and counted."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from recbase.data.tables import INTERACTIONS_FILE, read_interactions

    domain = domain_dir.name
    if domain not in codes.by_domain:
        raise UserError(f"{domain_dir}: domain '{domain}' has no rows in the codes file")
    item_ids, item_codes = codes.by_domain[domain]
    table = read_interactions(domain_dir).select(["user_id", "item_id", "timestamp"])
    for name in ("user_id", "item_id", "timestamp"):
        nulls = table[name].null_count
        if nulls:
            row = int(np.flatnonzero(table[name].is_null().to_numpy(zero_copy_only=False))[0])
            raise UserError(f"{domain_dir / INTERACTIONS_FILE}: row {row}, field '{name}' is null")
    skipped: Counter = Counter()
    rows = pc.index_in(table["item_id"], value_set=item_ids)
    known = rows.is_valid()
    n_unknown = table.num_rows - pc.sum(known).as_py() if table.num_rows else 0
    if n_unknown:
        skipped["interactions whose item has no codes"] += n_unknown
        table, rows = table.filter(known), rows.filter(known)
    table = table.append_column("row", rows)
    table = table.take(pc.sort_indices(table, [("user_id", "ascending"), ("timestamp", "ascending")]))
    item_rows = table["row"].to_numpy().astype(np.int64)
    user_codes = table["user_id"].combine_chunks().dictionary_encode()
    idx = user_codes.indices.to_numpy()
    starts = np.flatnonzero(np.r_[True, idx[1:] != idx[:-1]]) if len(idx) else np.zeros(0, np.int64)
    counts = np.diff(np.r_[starts, len(idx)])
    user_ids = user_codes.dictionary.take(pa.array(idx[starts])).to_pylist()
    tokens = codes.vocab.encode_codes(item_codes).astype(token_dtype(codes.vocab))[item_rows]
    return DomainSequences(domain, user_ids, starts.astype(np.int64), counts.astype(np.int64), tokens, item_rows,
                           skipped)


def stable_hash(*parts) -> int:
    """A 63-bit hash of ``parts`` that is the same on every machine and Python run (unlike ``hash``)."""
    text = "\x1f".join(str(p) for p in parts).encode("utf-8")
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1


def assemble(item_tokens: np.ndarray, starts: np.ndarray, counts: np.ndarray, eos: np.ndarray, vocab: Vocab,
             dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """Flat tokens and offsets of users ``bos, item tokens of rows starts[u]:starts[u]+counts[u], [eos]``."""
    n_levels = item_tokens.shape[1]
    lengths = 1 + counts * n_levels + eos.astype(np.int64)
    offsets = np.zeros(len(counts) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    out = np.empty(int(offsets[-1]), dtype)
    out[offsets[:-1]] = vocab.bos_id
    out[offsets[1:][eos] - 1] = vocab.eos_id
    total = int(counts.sum())
    if total:
        before = np.cumsum(counts) - counts
        step = np.arange(total, dtype=np.int64) - np.repeat(before, counts)
        src = np.repeat(starts, counts) + step
        dst = np.repeat(offsets[:-1] + 1, counts) + step * n_levels
        out[dst[:, None] + np.arange(n_levels)] = item_tokens[src]
    return out, offsets

