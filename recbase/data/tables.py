"""The two tables every later stage reads: ``items.parquet`` and ``interactions.parquet``, one pair per domain.

items:        domain (str), item_id (str), text (str), then the raw fields the reader kept (as strings)
interactions: domain (str), user_id (str), item_id (str), timestamp (int64 seconds, or row order when the source
              has no time)

Readers produce :class:`DomainTables`; :func:`finalize` applies the paper's filters (users with fewer than
``min_user_interactions`` dropped, histories cut to the last ``max_history``), drops interactions whose item has
no metadata and exact duplicate rows, and counts everything it dropped in an :class:`IngestSummary`.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recbase.io import atomic_path

ITEM_COLUMNS = ("domain", "item_id", "text")
INTERACTION_SCHEMA = pa.schema([
    ("domain", pa.string()),
    ("user_id", pa.string()),
    ("item_id", pa.string()),
    ("timestamp", pa.int64()),
])
ITEMS_FILE = "items.parquet"
INTERACTIONS_FILE = "interactions.parquet"


@dataclass
class IngestSummary:
    """What a reader and the filters kept and dropped, and why. Printed after every ingest."""

    domain: str
    items: int = 0
    users: int = 0
    interactions: int = 0
    dropped: Counter = field(default_factory=Counter)

    def drop(self, reason: str, n: int = 1) -> None:
        if n:
            self.dropped[reason] += n

    def format(self) -> str:
        lines = [f"[{self.domain}] items={self.items:,} users={self.users:,} interactions={self.interactions:,}"]
        for reason, n in sorted(self.dropped.items()):
            lines.append(f"  dropped {n:,}: {reason}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"domain": self.domain, "items": self.items, "users": self.users,
                "interactions": self.interactions, "dropped": dict(self.dropped)}


@dataclass
class DomainTables:
    """One domain as produced by a reader, before filtering."""

    domain: str
    items: pa.Table          # domain, item_id, text, raw fields...
    interactions: pa.Table   # INTERACTION_SCHEMA
    summary: IngestSummary


def make_items_table(domain: str, item_ids: list[str], texts: list[str], raw: dict[str, list] | None = None) -> pa.Table:
    """Build an items table; raw fields are stored as nullable strings so every domain has a simple schema."""
    cols = {"domain": pa.array([domain] * len(item_ids), pa.string()),
            "item_id": pa.array(item_ids, pa.string()),
            "text": pa.array(texts, pa.string())}
    for name, values in (raw or {}).items():
        if name in cols:
            continue
        cols[name] = pa.array([None if v is None else str(v) for v in values], pa.string())
    return pa.table(cols)


def make_interactions_table(domain: str, user_ids, item_ids, timestamps) -> pa.Table:
    n = len(user_ids)
    return pa.table({
        "domain": pa.array([domain] * n, pa.string()),
        "user_id": pa.array(user_ids, pa.string()),
        "item_id": pa.array(item_ids, pa.string()),
        "timestamp": pa.array(np.asarray(timestamps, dtype=np.int64), pa.int64()),
    }, schema=INTERACTION_SCHEMA)


def finalize(tables: DomainTables, min_user_interactions: int = 15, max_history: int = 2500) -> DomainTables:
    """Deduplicate, drop dangling interactions, apply the paper's user filters, sort by (user, time)."""
    s = tables.summary
    items = tables.items
    # Items: duplicate ids keep the first row.
    ids = items.column("item_id").to_pylist()
    seen: set[str] = set()
    keep = []
    for i, item_id in enumerate(ids):
        if item_id in seen:
            continue
        seen.add(item_id)
        keep.append(i)
    s.drop("duplicate item rows", len(ids) - len(keep))
    if len(keep) != len(ids):
        items = items.take(pa.array(keep, pa.int64()))

    inter = tables.interactions
    users = np.asarray(inter.column("user_id").to_pylist(), dtype=object)
    item_col = np.asarray(inter.column("item_id").to_pylist(), dtype=object)
    ts = inter.column("timestamp").to_numpy()

    known = np.fromiter((x in seen for x in item_col), dtype=bool, count=len(item_col))
    s.drop("interaction whose item has no metadata", int((~known).sum()))
    users, item_col, ts = users[known], item_col[known], ts[known]

    # Exact duplicate (user, item, timestamp) rows.
    if len(users):
        keys = np.rec.fromarrays([users.astype(str), item_col.astype(str), ts], names="u,i,t")
        _, first = np.unique(keys, return_index=True)
        first.sort()
        s.drop("duplicate interaction rows", len(users) - len(first))
        users, item_col, ts = users[first], item_col[first], ts[first]

    # Chronological per user; stable so equal timestamps keep source order.
    order = np.lexsort((ts, users.astype(str))) if len(users) else np.zeros(0, dtype=np.int64)
    users, item_col, ts = users[order], item_col[order], ts[order]

    counts = Counter(users.tolist())
    short = {u for u, c in counts.items() if c < min_user_interactions}
    if short:
        mask = np.fromiter((u not in short for u in users), dtype=bool, count=len(users))
        s.drop(f"users with < {min_user_interactions} interactions ({len(short):,} users)", int((~mask).sum()))
        users, item_col, ts = users[mask], item_col[mask], ts[mask]

    if max_history and len(users):
        # Position from the end of each user's run; keep the last max_history.
        boundaries = np.flatnonzero(np.r_[True, users[1:] != users[:-1], True])
        pos_from_end = np.empty(len(users), dtype=np.int64)
        for a, b in zip(boundaries[:-1], boundaries[1:]):
            pos_from_end[a:b] = np.arange(b - a)[::-1]
        mask = pos_from_end < max_history
        s.drop(f"interactions older than the last {max_history} of a user", int((~mask).sum()))
        users, item_col, ts = users[mask], item_col[mask], ts[mask]

    inter = make_interactions_table(tables.domain, users.tolist(), item_col.tolist(), ts)
    s.items = items.num_rows
    s.users = len(set(users.tolist()))
    s.interactions = inter.num_rows
    return DomainTables(tables.domain, items, inter, s)


def write_domain(tables: DomainTables, out_dir: str | Path) -> Path:
    """Write ``<out_dir>/<domain>/{items,interactions}.parquet`` atomically; returns the domain folder."""
    d = Path(out_dir) / tables.domain
    d.mkdir(parents=True, exist_ok=True)
    for name, table in ((ITEMS_FILE, tables.items), (INTERACTIONS_FILE, tables.interactions)):
        with atomic_path(d / name) as tmp:
            pq.write_table(table, tmp)
    return d


def read_items(domain_dir: str | Path) -> pa.Table:
    return pq.read_table(Path(domain_dir) / ITEMS_FILE)


def read_interactions(domain_dir: str | Path) -> pa.Table:
    return pq.read_table(Path(domain_dir) / INTERACTIONS_FILE)


def list_domains(data_dir: str | Path) -> list[Path]:
    """Domain folders (those holding both tables) under ``data_dir``, sorted by name."""
    root = Path(data_dir)
    return sorted(p for p in root.iterdir() if (p / ITEMS_FILE).exists() and (p / INTERACTIONS_FILE).exists())
