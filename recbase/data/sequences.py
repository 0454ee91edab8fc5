"""Users' chronological histories as item tokens: one domain's interactions mapped through the codes, and the
flat ``bos, item tokens..., [eos]`` arrays the shards and eval sets are cut from (docs/formats.md, "Vocabulary")."""
from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from recbase.data.codes import Codes
from recbase.data.shard_format import token_dtype
from recbase.errors import UserError
from recbase.vocab import Vocab

if TYPE_CHECKING:
    import pyarrow as pa

BATCH_ROWS = 1 << 20   # interaction rows read at once where a domain is read in batches


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
    item_ids, item_codes = domain_codes(domain_dir, codes)
    return load_users(domain_dir, item_ids, item_tokens(codes.vocab, item_codes))


def load_users(domain_dir: Path, item_ids: pa.Array, tokens: np.ndarray | None = None) -> DomainSequences:
    """A domain's interactions with the catalog ``item_ids``, grouped by user. Without ``tokens`` (statistics
    needed before the codes exist, such as the interaction counts a tokenizer orders its collisions by),
    ``item_tokens`` has no columns."""
    import pyarrow as pa

    from recbase.data.tables import read_interactions

    item_ids = pa.array(item_ids, pa.string())
    if tokens is None:
        tokens = np.zeros((len(item_ids), 0), np.uint16)
    skipped: Counter = Counter()
    table = known_items(checked_interactions(domain_dir, read_interactions(domain_dir)), item_ids, skipped)
    return group_users(domain_dir.name, table, tokens, skipped)


def item_counts(seqs: DomainSequences, n_items: int, exclude_last: int = 0) -> np.ndarray:
    """Interactions per catalog row, without each user's last ``exclude_last`` items (held-out targets)."""
    counts = np.zeros(n_items, np.int64)
    for start, count in zip(seqs.starts.tolist(), seqs.counts.tolist()):
        np.add.at(counts, seqs.item_rows[start:start + max(count - exclude_last, 0)], 1)
    return counts


def domain_codes(domain_dir: Path, codes: Codes) -> tuple[pa.Array, np.ndarray]:
    """The item ids and codes of the domain of ``domain_dir``; a domain without codes is an error."""
    if domain_dir.name not in codes.by_domain:
        raise UserError(f"{domain_dir}: domain '{domain_dir.name}' has no rows in the codes file")
    return codes.by_domain[domain_dir.name]


def item_tokens(vocab: Vocab, item_codes: np.ndarray) -> np.ndarray:
    """Each catalog item's L tokens ``[n_items, L]`` in the shard token dtype."""
    return vocab.encode_codes(item_codes).astype(token_dtype(vocab))


def checked_interactions(domain_dir: Path, table: pa.Table, first_row: int = 0) -> pa.Table:
    """``user_id, item_id, timestamp`` of some rows of a domain's interactions (the file's rows from
    ``first_row`` on); a null in them is an error naming the file's row and field."""
    from recbase.data.tables import INTERACTIONS_FILE

    table = table.select(["user_id", "item_id", "timestamp"])
    for name in ("user_id", "item_id", "timestamp"):
        if table[name].null_count:
            row = first_row + int(np.flatnonzero(table[name].is_null().to_numpy(zero_copy_only=False))[0])
            raise UserError(f"{domain_dir / INTERACTIONS_FILE}: row {row}, field '{name}' is null")
    return table


def interaction_batches(domain_dir: Path, item_ids: pa.Array, skipped: Counter,
                        batch_rows: int = BATCH_ROWS) -> Iterator[pa.Table]:
    """A domain's interactions as :func:`known_items` tables, ``batch_rows`` rows of the file at a time, so that
    memory holds one batch whatever the size of the log."""
    from recbase.data.tables import interaction_batches as read_batches

    first_row = 0
    for batch in read_batches(domain_dir, ["user_id", "item_id", "timestamp"], batch_rows):
        table = checked_interactions(domain_dir, batch, first_row)
        first_row += batch.num_rows
        yield known_items(table, item_ids, skipped)


def known_items(table: pa.Table, item_ids: pa.Array, skipped: Counter) -> pa.Table:
    """``user_id, timestamp, row`` (the item's row in the domain's codes) of the interactions whose item has
    codes; the others are counted in ``skipped``."""
    import pyarrow.compute as pc

    rows = pc.index_in(table["item_id"], value_set=item_ids)
    known = rows.is_valid()
    n_unknown = table.num_rows - pc.sum(known).as_py() if table.num_rows else 0
    if n_unknown:
        skipped["interactions whose item has no codes"] += n_unknown
        table, rows = table.filter(known), rows.filter(known)
    return table.select(["user_id", "timestamp"]).append_column("row", rows.cast("int64"))


def group_users(domain: str, table: pa.Table, tokens: np.ndarray, skipped: Counter) -> DomainSequences:
    """The users of ``table`` (``user_id, timestamp, row``: whole users, rows in file order) in user id order,
    each user's items in time order (ties keep file order); ``tokens`` are the catalog's item tokens."""
    import pyarrow as pa
    import pyarrow.compute as pc

    table = table.take(pc.sort_indices(table, [("user_id", "ascending"), ("timestamp", "ascending")]))
    item_rows = table["row"].to_numpy().astype(np.int64)
    user_codes = table["user_id"].combine_chunks().dictionary_encode()
    idx = user_codes.indices.to_numpy()
    starts = np.flatnonzero(np.r_[True, idx[1:] != idx[:-1]]) if len(idx) else np.zeros(0, np.int64)
    counts = np.diff(np.r_[starts, len(idx)])
    user_ids = user_codes.dictionary.take(pa.array(idx[starts])).to_pylist()
    return DomainSequences(domain, user_ids, starts.astype(np.int64), counts.astype(np.int64), tokens[item_rows],
                           item_rows, skipped)


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

