"""Any catalog: an items file and an interactions file (CSV, TSV, JSON lines or Parquet) plus a small spec that
names the id, user and time columns, the text fields and the template kind.

The spec is a :class:`GenericSpec`, read from JSON with :func:`recbase.config.load_config` and/or given as
``key=value`` on the command line, e.g.::

    recbase ingest generic my_catalog/ --out data --set items=items.csv interactions=events.jsonl \\
        item_id=sku user_id=customer time=ts time_format=iso text_fields=title,brand kind=product

Real exports are rarely clean: ``bad_rows=skip`` skips and counts rows with an empty id or a value that is not a
time instead of stopping at the first, and ``field_map`` renames source columns to the template's field names
(``{"app_name": "title"}``) so that the text reads like every other source of its kind.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from recbase.config import load_config
from recbase.data.readers.common import (InputError, build_items, check_nonempty, empty_ids, id_column,
                                         iter_records, make_tables, parse_times, read_csv, time_column)
from recbase.data.tables import DomainTables, IngestSummary
from recbase.data.templates import template


@dataclass
class GenericSpec:
    items: str = ""                  # items file, relative to the spec's folder (or PATH)
    interactions: str = ""           # interactions file, same
    item_id: str = "item_id"         # item id column of the items file
    user_id: str = "user_id"         # user id column of the interactions file
    interaction_item_id: str = ""    # item id column of the interactions file (default: item_id)
    time: str = ""                   # time column of the interactions file; empty: row order
    time_format: str = "unix"        # unix | unix_ms | iso | a strftime pattern such as %Y-%m-%d
    text_fields: str | list[str] = field(default_factory=list)   # item fields rendered into text, list or "a,b"
    kind: str = "item"               # template kind (recbase.data.templates.TEMPLATES: movie, product, book, ...)
    field_map: dict[str, str] = field(default_factory=dict)   # source column -> template field, {"app_name": "title"}
    bad_rows: str = "error"          # error: stop at the first empty id or bad time; skip: skip and count such rows


def load_spec(path: str | Path, spec_file: str | None = None, overrides: list[str] | None = None) -> GenericSpec:
    """The spec from ``spec_file`` (or ``path`` when that is a ``.json`` file) with ``key=value`` overrides."""
    if spec_file is None and Path(path).suffix == ".json":
        spec_file = str(path)
    return load_config(GenericSpec, spec_file, overrides or [])


def read_any(path: Path) -> tuple[pd.DataFrame, int]:
    """A table file by extension, and the line number of its first data row (for error messages)."""
    name = path.name.lower().removesuffix(".gz")
    if name.endswith(".parquet"):
        check_nonempty(path)
        return pq.read_table(path).to_pandas(), 1
    if name.endswith((".jsonl", ".json", ".ndjson")):
        rows = [record for _, record in iter_records(path)]
        return pd.DataFrame.from_records(rows), 1
    if name.endswith((".tsv", ".tab")):
        return read_csv(path, sep="\t", quoting=csv.QUOTE_NONE), 2
    if name.endswith(".csv"):
        return read_csv(path), 2
    raise InputError(path, "unknown table format (use .csv, .tsv, .jsonl/.json or .parquet)")


def _column(df: pd.DataFrame, name: str, path: Path, role: str) -> None:
    if name not in df.columns:
        raise InputError(path, f"missing {role} column (columns: {', '.join(map(str, df.columns))})",
                         line=1, field=name)


def _skip_bad(df: pd.DataFrame, ids: list[str], time: str, time_format: str, path: Path,
              summary: IngestSummary, what: str) -> pd.DataFrame:
    """``df`` without its rows that have an empty id in ``ids`` or (when ``time`` is set) a value that is not a
    time, each reason counted in ``summary`` under the file's name."""
    bad = np.zeros(len(df), bool)
    for name in ids:
        empty = empty_ids(df, name) & ~bad
        summary.drop(f"{what} rows with an empty {name} ({path.name})", int(empty.sum()))
        bad |= empty
    if time:
        untimed = parse_times(df[time].astype(str), time_format)[1] & ~bad
        summary.drop(f"{what} rows whose {time} is not a time ({path.name})", int(untimed.sum()))
        bad |= untimed
    return df[~bad].reset_index(drop=True) if bad.any() else df


def read(path: Path, domain: str, spec: GenericSpec, kind: str | None = None) -> DomainTables:
    path = Path(path)
    root = path.parent if path.is_file() else path
    kind = kind or spec.kind
    try:
        template(kind)
    except ValueError as e:
        raise InputError(path, str(e), field="kind") from None
    if spec.bad_rows not in ("error", "skip"):
        raise InputError(path, f"bad_rows must be 'error' or 'skip', not {spec.bad_rows!r}", field="bad_rows")
    skip = spec.bad_rows == "skip"
    fields = spec.text_fields.split(",") if isinstance(spec.text_fields, str) else list(spec.text_fields)
    fields = [f.strip() for f in fields if f.strip()]
    if not spec.items or not spec.interactions:
        raise InputError(path, "the generic spec needs both items=FILE and interactions=FILE")
    if not fields:
        raise InputError(path, "the generic spec needs text_fields (the item fields rendered into text)")
    summary = IngestSummary(domain)

    items_path = root / spec.items
    items_df, first = read_any(items_path)
    for name in [spec.item_id] + fields:
        _column(items_df, name, items_path, "item" if name == spec.item_id else "text field")
    unknown = sorted(set(spec.field_map) - set(fields))
    if unknown:
        raise InputError(path, f"field_map names {', '.join(unknown)}, which are not in text_fields "
                               f"({', '.join(fields)})", field="field_map")
    if skip:
        items_df = _skip_bad(items_df, [spec.item_id], "", "", items_path, summary, "item")
    item_ids = id_column(items_df, spec.item_id, items_path, first)
    values = {spec.field_map.get(f, f): items_df[f].astype(object).where(items_df[f].notna(), None).tolist()
              for f in fields}
    items = build_items(domain, kind, list(item_ids), values, summary)

    inter_path = root / spec.interactions
    inter_df, first = read_any(inter_path)
    item_col = spec.interaction_item_id or spec.item_id
    for name in [spec.user_id, item_col] + ([spec.time] if spec.time else []):
        _column(inter_df, name, inter_path, "interaction")
    if skip:
        inter_df = _skip_bad(inter_df, [spec.user_id, item_col], spec.time, spec.time_format, inter_path, summary,
                             "interaction")
    if spec.time:
        ts = time_column(inter_df[spec.time].astype(str), spec.time_format, inter_path, first)
    else:
        ts = np.arange(len(inter_df), dtype=np.int64)
    return make_tables(domain, items, id_column(inter_df, spec.user_id, inter_path, first),
                       id_column(inter_df, item_col, inter_path, first), ts, summary)
