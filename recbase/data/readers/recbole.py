"""RecBole atomic files (https://recbole.io/docs/user_guide/data/atomic_files.html), tab-separated with a
``name:type`` header.

Two layouts:

- sequential, as UniSRec/CoWPiRec publish their downstream sets (e.g. ``Scientific``): ``<name>.text``
  (item_id, text), ``<name>.item2index`` / ``<name>.user2index`` (raw id <TAB> integer, no header) and
  ``<name>.test.inter`` (user index, chronological item-index list, last item). The test split holds each user's
  full history plus the held-out last item, so it alone gives every interaction; indices are mapped back to the
  raw Amazon ids. There are no times: the timestamp is the position in the user's history (0, 1, ...).
- plain: ``<name>.inter`` with ``user_id``, ``item_id`` and optionally ``timestamp`` columns, and items from
  ``<name>.text`` or ``<name>.item``.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from recbase.data.readers.common import (InputError, build_items, find_file, int_column, make_tables, read_csv,
                                         seconds_column)
from recbase.data.tables import DomainTables, IngestSummary

KIND = "product"


def _read_atomic(path: Path, columns: list[str]):
    """An atomic file with its ``name:type`` header reduced to names; ``columns`` must be present."""
    df = read_csv(path, sep="\t", quoting=csv.QUOTE_NONE)
    df = df.rename(columns={c: c.split(":", 1)[0] for c in df.columns})
    for col in columns:
        if col not in df.columns:
            raise InputError(path, f"missing column (header has: {', '.join(df.columns)})", line=1, field=col)
    return df


def _read_index(path: Path) -> dict[str, str]:
    """index (as text) -> raw id."""
    df = read_csv(path, sep="\t", header=False, names=["raw", "index"], quoting=csv.QUOTE_NONE)
    int_column(df, "index", path, first_line=1)
    return dict(zip(df["index"], df["raw"]))


def read(path: Path, domain: str, kind: str = KIND) -> DomainTables:
    path = Path(path)
    summary = IngestSummary(domain)
    items_path = find_file(path, ["*.text", "*.item"], "RecBole item")
    items_df = _read_atomic(items_path, ["item_id"])
    text_fields = {c: list(items_df[c]) for c in items_df.columns if c != "item_id"}
    items = build_items(domain, kind, list(items_df["item_id"]), text_fields, summary)

    if list(path.glob("*.test.inter")):
        return _read_sequential(path, domain, items, summary)
    inter_path = find_file(path, ["*.inter"], "RecBole interaction")
    inter = _read_atomic(inter_path, ["user_id", "item_id"])
    if "timestamp" in inter.columns:
        ts = seconds_column(inter["timestamp"], inter_path)
    else:
        ts = np.arange(len(inter), dtype=np.int64)
    return make_tables(domain, items, inter["user_id"].to_numpy(object), inter["item_id"].to_numpy(object), ts,
                       summary)


def _read_sequential(path: Path, domain: str, items, summary: IngestSummary) -> DomainTables:
    test_path = find_file(path, ["*.test.inter"], "RecBole test split")
    item_index = _read_index(find_file(path, ["*.item2index"], "item2index"))
    user_index = _read_index(find_file(path, ["*.user2index"], "user2index"))
    test = _read_atomic(test_path, ["user_id", "item_id_list", "item_id"])
    users, item_ids, ts = [], [], []
    for row, (user, history, last) in enumerate(zip(test["user_id"], test["item_id_list"], test["item_id"])):
        line = row + 2
        if user not in user_index:
            raise InputError(test_path, f"user index {user!r} not in user2index", line=line, field="user_id")
        sequence = history.split() + [last]
        for position, index in enumerate(sequence):
            raw = item_index.get(index)
            if raw is None:
                raise InputError(test_path, f"item index {index!r} not in item2index", line=line,
                                 field="item_id_list" if position < len(sequence) - 1 else "item_id")
            users.append(user_index[user])
            item_ids.append(raw)
            ts.append(position)
    return make_tables(domain, items, users, item_ids, ts, summary)
