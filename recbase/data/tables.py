"""The two tables every later stage reads: ``items.parquet`` and ``interactions.parquet``, one pair per domain.

items:        domain (str), item_id (str), text (str), then the raw fields the reader kept (as strings)
interactions: domain (str), user_id (str), item_id (str), timestamp (int64 seconds, or row order when the source
              has no time)

Readers produce :class:`DomainTables`; :func:`finalize` applies the paper's filters (users with fewer than
``min_user_interactions`` dropped, histories cut to the last ``max_history``), optionally keeps a seeded sample of
``max_users`` users and only the items they touched (a big domain made small enough to embed and train on a CPU),
drops interactions whose item has no metadata and exact duplicate rows, and counts everything it dropped in an
:class:`IngestSummary`.

A reader may attach extra tables keyed by ``domain, user_id, item_id`` (MIND's ``impressions``); they are filtered
to the kept users and known items and written beside the two main tables as ``<name>.parquet``.
"""
from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recbase.errors import UserError
from recbase.io import atomic_path, atomic_write_text, plain_name

ITEM_COLUMNS = ("domain", "item_id", "text")
INTERACTION_SCHEMA = pa.schema([
    ("domain", pa.string()),
    ("user_id", pa.string()),
    ("item_id", pa.string()),
    ("timestamp", pa.int64()),
])
ITEMS_FILE = "items.parquet"
INTERACTIONS_FILE = "interactions.parquet"
IMPRESSIONS_FILE = "impressions.parquet"   # real shown-but-not-clicked items, where the dataset has them (MIND)
SUMMARY_FILE = "ingest_summary.json"   # what an ingest kept and dropped


@dataclass
class IngestSummary:
    """What a reader and the filters kept and dropped, and why. Printed after every ingest."""

    domain: str
    items: int = 0
    users: int = 0
    interactions: int = 0
    dropped: Counter = field(default_factory=Counter)
    dropped_users: Counter = field(default_factory=Counter)   # reason -> users behind its dropped rows, if any
    read_items: int = 0          # item rows the reader produced, before deduplication
    read_interactions: int = 0   # interaction rows the reader produced, before any filter
    extra: dict = field(default_factory=dict)   # rows kept per extra table
    seconds: float = 0.0         # wall time of read + finalize

    def drop(self, reason: str, n: int = 1, users: int = 0) -> None:
        if n:
            self.dropped[reason] += n
        if users:
            self.dropped_users[reason] += users

    def dropped_reasons(self) -> dict[str, int]:
        """Rows dropped per reason, the reason naming its users where it drops whole users."""
        return {reason + (f" ({self.dropped_users[reason]:,} users)" if self.dropped_users[reason] else ""): n
                for reason, n in sorted(self.dropped.items())}

    def add(self, other: "IngestSummary") -> None:
        """Add the counts of ``other``, a summary of a disjoint set of users of the same domain."""
        self.dropped.update(other.dropped)
        self.dropped_users.update(other.dropped_users)
        for name in ("users", "interactions", "read_interactions"):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def format(self) -> str:
        lines = [f"[{self.domain}] items={self.items:,} users={self.users:,} interactions={self.interactions:,}"]
        if self.read_items or self.read_interactions:
            lines.append(f"  read {self.read_items:,} item rows and {self.read_interactions:,} interaction rows")
        for name, n in sorted(self.extra.items()):
            lines.append(f"  {name}={n:,}")
        for reason, n in self.dropped_reasons().items():
            lines.append(f"  dropped {n:,}: {reason}")
        if self.seconds:
            rate = self.read_interactions / self.seconds
            lines.append(f"  took {self.seconds:.2f}s ({rate:,.0f} interactions/s)")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"domain": self.domain, "items": self.items, "users": self.users,
                "interactions": self.interactions, "dropped": self.dropped_reasons(),
                "read_items": self.read_items, "read_interactions": self.read_interactions,
                "extra": dict(self.extra), "seconds": round(self.seconds, 3)}


@dataclass
class DomainTables:
    """One domain as produced by a reader, before filtering."""

    domain: str
    items: pa.Table          # domain, item_id, text, raw fields...
    interactions: pa.Table   # INTERACTION_SCHEMA
    summary: IngestSummary
    extra: dict[str, pa.Table] = field(default_factory=dict)   # name -> table with user_id and item_id columns


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


def finalize(tables: DomainTables, min_user_interactions: int = 15, max_history: int = 2500,
             interacted_items_only: bool = False, max_users: int = 0) -> DomainTables:
    """Deduplicate, drop dangling interactions, apply the paper's user filters, sort by (user, time).

    ``max_history=0`` keeps whole histories; ``min_user_interactions=0`` keeps every user.
    ``interacted_items_only`` keeps only the items that a kept interaction uses: a catalog far larger than what
    its users touched costs embedding time for items no sequence can contain. ``max_users > 0`` keeps that many
    users drawn at random (seed 0, from the users left by the other filters) and shrinks the catalog to the items
    they interacted with; 0 keeps every user and the whole catalog.
    """
    s = tables.summary
    items = tables.items
    s.read_items = items.num_rows
    s.read_interactions = tables.interactions.num_rows

    # Items: duplicate ids keep the first row.
    item_ids = items.column("item_id").to_pandas()
    dup_items = item_ids.duplicated().to_numpy()
    s.drop("duplicate item rows", int(dup_items.sum()))
    if dup_items.any():
        items = items.filter(pa.array(~dup_items))
    known_items = items.column("item_id").combine_chunks()

    inter = tables.interactions
    known = pc.is_in(inter.column("item_id"), value_set=known_items).to_numpy(zero_copy_only=False)
    s.drop("interaction whose item has no metadata", int((~known).sum()))
    rows = np.flatnonzero(known)
    # Integer codes; users coded in sorted order, so sorting codes sorts ids.
    kept = inter.take(pa.array(rows, pa.int64()))
    users, _ = pd.factorize(kept.column("user_id").to_pandas(), sort=True)
    items_coded, _ = pd.factorize(kept.column("item_id").to_pandas())
    ts = kept.column("timestamp").to_numpy()

    # Exact duplicate (user, item, timestamp) rows keep the first.
    dup = pd.DataFrame({"u": users, "i": items_coded, "t": ts}).duplicated().to_numpy()
    s.drop("duplicate interaction rows", int(dup.sum()))
    keep = ~dup
    users, ts, rows = users[keep], ts[keep], rows[keep]

    # Chronological per user; lexsort is stable, so equal timestamps keep source order.
    order = np.lexsort((ts, users))
    users, rows = users[order], rows[order]

    short = np.bincount(users)[users] < min_user_interactions if len(users) else np.zeros(0, bool)
    if short.any():
        s.drop(f"users with < {min_user_interactions} interactions", int(short.sum()),
               users=len(np.unique(users[short])))
        users, rows = users[~short], rows[~short]

    n_users = len(np.unique(users))
    if 0 < max_users < n_users:
        sample = np.random.default_rng(0).choice(np.unique(users), size=max_users, replace=False)
        in_sample = np.isin(users, sample)
        s.drop(f"users outside a random sample of {max_users:,}", int((~in_sample).sum()), users=n_users - max_users)
        users, rows = users[in_sample], rows[in_sample]
        touched = pc.unique(inter.column("item_id").take(pa.array(rows, pa.int64())))
        in_catalog = pc.is_in(items.column("item_id"), value_set=touched)
        s.drop("items no sampled user interacted with", items.num_rows - pc.sum(in_catalog).as_py())
        items = items.filter(in_catalog)
        known_items = items.column("item_id").combine_chunks()

    if max_history and len(users):
        starts = np.r_[True, users[1:] != users[:-1]]
        ends = np.flatnonzero(np.r_[starts[1:], True])
        from_end = ends[np.cumsum(starts) - 1] - np.arange(len(users))
        old = from_end >= max_history
        s.drop(f"interactions older than the last {max_history} of a user", int(old.sum()))
        rows = rows[~old]

    inter = inter.take(pa.array(rows, pa.int64())).cast(INTERACTION_SCHEMA)
    kept_users = pc.unique(inter.column("user_id"))
    if interacted_items_only:
        used = pc.is_in(items.column("item_id"), value_set=pc.unique(inter.column("item_id")))
        s.drop("items no kept interaction uses", items.num_rows - pc.sum(used).as_py() if items.num_rows else 0)
        items = items.filter(used)
        known_items = items.column("item_id").combine_chunks()
    extra = {}
    for name, table in tables.extra.items():
        mask = pc.and_(pc.is_in(table.column("user_id"), value_set=kept_users),
                       pc.is_in(table.column("item_id"), value_set=known_items))
        extra[name] = table.filter(mask)
        s.drop(f"{name} rows of dropped users or unknown items", table.num_rows - extra[name].num_rows)
        s.extra[name] = extra[name].num_rows
    s.items = items.num_rows
    s.users = len(kept_users)
    s.interactions = inter.num_rows
    return DomainTables(tables.domain, items, inter, s, extra)


def check_domain_name(name: str) -> str:
    """A domain name is a folder name under the data folder, so it must be a plain name."""
    return plain_name(name, "domain name", "<out>/<domain>/")


def write_domain(tables: DomainTables, out_dir: str | Path) -> Path:
    """Write ``<out_dir>/<domain>/{items,interactions}.parquet`` (and any extra tables) atomically."""
    d = Path(out_dir) / check_domain_name(tables.domain)
    d.mkdir(parents=True, exist_ok=True)
    outputs = [(ITEMS_FILE, tables.items), (INTERACTIONS_FILE, tables.interactions)]
    outputs += [(f"{name}.parquet", table) for name, table in tables.extra.items()]
    for name, table in outputs:
        with atomic_path(d / name) as tmp:
            pq.write_table(table, tmp)
    return d


def ingest_inputs(fmt: str, source: str | Path, min_user_interactions: int, max_history: int,
                  interacted_items_only: bool, max_users: int) -> dict:
    """What one ingest's tables are made from: the first keys of its ``ingest_summary.json``."""
    return {"format": fmt, "source": str(Path(source).resolve()), "min_user_interactions": min_user_interactions,
            "max_history": max_history, "interacted_items_only": interacted_items_only, "max_users": max_users}


def write_summary(domain_dir: Path, inputs: dict, summary: IngestSummary) -> None:
    atomic_write_text(domain_dir / SUMMARY_FILE, json.dumps({**inputs, **summary.to_dict()}, indent=2) + "\n")


def check_replaceable(domain_dir: str | Path, inputs: dict, overwrite: bool = False) -> None:
    """Refuse to replace a domain's tables that were made from other inputs (another dataset, format or filter;
    or tables no ingest recorded, such as the demo world's) unless ``overwrite``: embeddings, codes and shards may
    have been made from them. A rerun of the same ingest replaces its own tables."""
    folder = Path(domain_dir)
    if overwrite or not has_tables(folder):
        return
    try:
        old = json.loads((folder / SUMMARY_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        old = None
    if isinstance(old, dict):
        changed = [k for k in inputs if old.get(k) != inputs[k]]
        if not changed:
            return
        what = "tables ingested with another " + ", ".join(f"{k} ({old.get(k)!r}, now {inputs[k]!r})"
                                                            for k in changed)
    else:
        what = f"tables that no ingest recorded (no readable {SUMMARY_FILE})"
    raise UserError(f"{folder}: holds {what}, which embeddings, codes and shards may be made from; choose another "
                    f"--out or --domain, or pass --overwrite to replace them")


def read_table(path: str | Path, columns: list[str] | None = None, required: tuple[str, ...] = ()) -> pa.Table:
    """One table file (``columns`` only, when given); a missing or unreadable file, or a missing ``columns`` or
    ``required`` column, is a user error naming the file."""
    path = Path(path)
    check_table(path, (*(columns or ()), *required))
    try:
        return pq.read_table(path, columns=columns)
    except (pa.ArrowException, OSError) as e:
        raise _unreadable(path, e) from None


def check_table(path: Path, columns: tuple[str, ...] = ()) -> None:
    """A user error naming ``path`` unless it is a readable Parquet file holding ``columns`` (footer only)."""
    if not path.is_file():
        raise UserError(f"{path}: not found (write the tables with `recbase ingest`)")
    try:
        names = pq.read_schema(path).names
    except (pa.ArrowException, OSError) as e:
        raise _unreadable(path, e) from None
    missing = [c for c in dict.fromkeys(columns) if c not in names]
    if missing:
        raise UserError(f"{path}: missing column(s) {', '.join(missing)} (columns: {', '.join(names)})")


def _unreadable(path: Path, error: Exception) -> UserError:
    return UserError(f"{path}: not a readable Parquet file ({error}); write it again with `recbase ingest`")


def read_items(domain_dir: str | Path, columns: list[str] | None = None) -> pa.Table:
    return read_table(Path(domain_dir) / ITEMS_FILE, columns)


def read_interactions(domain_dir: str | Path, columns: list[str] | None = None) -> pa.Table:
    return read_table(Path(domain_dir) / INTERACTIONS_FILE, columns)


def interaction_batches(domain_dir: str | Path, columns: list[str], batch_rows: int) -> Iterator[pa.Table]:
    """A domain's interactions, ``columns`` only, ``batch_rows`` rows of the file at a time (in file order), so
    that a reader of a log of any size holds one batch; a damaged file is the same user error as in
    :func:`read_table`."""
    path = Path(domain_dir) / INTERACTIONS_FILE
    check_table(path, tuple(columns))
    try:
        for batch in pq.ParquetFile(path).iter_batches(batch_rows, columns=columns):
            yield pa.Table.from_batches([batch])
    except (pa.ArrowException, OSError) as e:
        raise _unreadable(path, e) from None


def read_item_ids(domain_dir: str | Path) -> list[str]:
    """The domain's item ids in ``items.parquet`` order (the row order of its embeddings)."""
    return read_items(domain_dir, ["item_id"]).column("item_id").to_pylist()


def read_impressions(domain_dir: str | Path) -> pa.Table | None:
    """The domain's ``impressions.parquet`` (``user_id, item_id, label``), or None when it has none."""
    path = Path(domain_dir) / IMPRESSIONS_FILE
    return read_table(path, required=("user_id", "item_id", "label")) if path.exists() else None


def user_histories(domain_dir: str | Path) -> dict[str, list[str]]:
    """Each user's items in time order (ties keep the table's order, which is by user, then time)."""
    table = read_interactions(domain_dir, ["user_id", "item_id", "timestamp"])
    users = np.asarray(table.column("user_id").to_pylist(), dtype=object)
    items = np.asarray(table.column("item_id").to_pylist(), dtype=object)
    ts = table.column("timestamp").to_numpy()
    order = np.lexsort((ts, users.astype(str)))
    histories: dict[str, list[str]] = {}
    for u, i in zip(users[order].tolist(), items[order].tolist()):
        histories.setdefault(u, []).append(i)
    return histories


def has_tables(domain_dir: str | Path) -> bool:
    """True when ``domain_dir`` holds both tables (the interactions are written last)."""
    return (Path(domain_dir) / ITEMS_FILE).exists() and (Path(domain_dir) / INTERACTIONS_FILE).exists()


def ingested(domain_dir: str | Path) -> bool:
    """True when an ingest wrote ``domain_dir``'s tables from dataset files (its summary lies beside them); the
    demo world's generated tables have none."""
    return (Path(domain_dir) / SUMMARY_FILE).exists()


def count_interactions(domain_dir: str | Path) -> int:
    """Rows of a domain's interactions table, from the Parquet footer (no data read)."""
    path = Path(domain_dir) / INTERACTIONS_FILE
    check_table(path)
    return pq.ParquetFile(path).metadata.num_rows


def count_users(domain_dir: str | Path, batch_rows: int = 1 << 20) -> tuple[int, int]:
    """(users, interactions) of a domain's interactions table, reading the ``user_id`` column in batches: the
    table is sorted by user, so users are counted as runs and memory holds one batch. A table that is not sorted
    (written by hand) is counted whole."""
    path = Path(domain_dir) / INTERACTIONS_FILE
    users = rows = 0
    last = None
    for batch in pq.ParquetFile(path).iter_batches(batch_rows, columns=["user_id"]):
        ids = batch.column(0)
        if len(ids) == 0:
            continue
        if pc.any(pc.less(ids[1:], ids[:-1])).as_py() or (last is not None and ids[0].as_py() < last):
            return pc.count_distinct(pq.read_table(path, columns=["user_id"])["user_id"]).as_py(), \
                count_interactions(domain_dir)
        users += 1 + (pc.sum(pc.not_equal(ids[1:], ids[:-1])).as_py() or 0) - (ids[0].as_py() == last)
        rows += len(ids)
        last = ids[-1].as_py()
    return users, rows


def list_domains(data_dir: str | Path) -> list[Path]:
    """Domain folders (those holding both tables) under ``data_dir``, sorted by name."""
    return sorted(p for p in Path(data_dir).iterdir() if has_tables(p))
