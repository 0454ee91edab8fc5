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
from typing import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from recbase.config import load_config
from recbase.data.readers.common import (InputError, build_items, check_nonempty, empty_ids, id_column,
                                         iter_records, make_tables, open_binary, parse_times, read_csv,
                                         time_column)
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


@dataclass
class _Plan:
    """A spec checked against its files' names: what both the whole-file and the chunked reading need."""

    kind: str
    fields: list[str]
    skip: bool
    item_col: str
    items_path: Path
    inter_path: Path


def input_files(path: Path, spec: GenericSpec) -> tuple[Path, Path]:
    """The items and interactions files that ``spec`` names, relative to ``path`` (or to the folder of a file path)."""
    if not spec.items or not spec.interactions:
        raise InputError(path, "the generic spec needs both items=FILE and interactions=FILE")
    root = path.parent if path.is_file() else path
    return root / spec.items, root / spec.interactions


def _plan(path: Path, spec: GenericSpec, kind: str | None) -> _Plan:
    kind = kind or spec.kind
    try:
        template(kind)
    except ValueError as e:
        raise InputError(path, str(e), field="kind") from None
    if spec.bad_rows not in ("error", "skip"):
        raise InputError(path, f"bad_rows must be 'error' or 'skip', not {spec.bad_rows!r}", field="bad_rows")
    fields = spec.text_fields.split(",") if isinstance(spec.text_fields, str) else list(spec.text_fields)
    fields = [f.strip() for f in fields if f.strip()]
    items_path, inter_path = input_files(path, spec)
    if not fields:
        raise InputError(path, "the generic spec needs text_fields (the item fields rendered into text)")
    unknown = sorted(set(spec.field_map) - set(fields))
    if unknown:
        raise InputError(path, f"field_map names {', '.join(unknown)}, which are not in text_fields "
                               f"({', '.join(fields)})", field="field_map")
    return _Plan(kind, fields, spec.bad_rows == "skip", spec.interaction_item_id or spec.item_id, items_path,
                 inter_path)


def _items(plan: _Plan, spec: GenericSpec, domain: str, summary: IngestSummary):
    items_df, first = read_any(plan.items_path)
    for name in [spec.item_id] + plan.fields:
        _column(items_df, name, plan.items_path, "item" if name == spec.item_id else "text field")
    if plan.skip:
        items_df = _skip_bad(items_df, [spec.item_id], "", "", plan.items_path, summary, "item")
    item_ids = id_column(items_df, spec.item_id, plan.items_path, first)
    values = {spec.field_map.get(f, f): items_df[f].astype(object).where(items_df[f].notna(), None).tolist()
              for f in plan.fields}
    return build_items(domain, plan.kind, list(item_ids), values, summary)


def _interaction_columns(df: pd.DataFrame, plan: _Plan, spec: GenericSpec, first: int, row_offset: int,
                         summary: IngestSummary) -> tuple[pd.Series, pd.Series, np.ndarray]:
    """(users, items, seconds) of interaction rows ``df`` whose first row is line ``first`` of the file and row
    ``row_offset`` of the kept rows (the timestamp when the spec has no time column)."""
    for name in [spec.user_id, plan.item_col] + ([spec.time] if spec.time else []):
        _column(df, name, plan.inter_path, "interaction")
    if plan.skip:
        df = _skip_bad(df, [spec.user_id, plan.item_col], spec.time, spec.time_format, plan.inter_path, summary,
                       "interaction")
    if spec.time:
        ts = time_column(df[spec.time].astype(str), spec.time_format, plan.inter_path, first)
    else:
        ts = np.arange(row_offset, row_offset + len(df), dtype=np.int64)
    return (id_column(df, spec.user_id, plan.inter_path, first), id_column(df, plan.item_col, plan.inter_path, first),
            ts)


def read(path: Path, domain: str, spec: GenericSpec, kind: str | None = None) -> DomainTables:
    path = Path(path)
    plan = _plan(path, spec, kind)
    summary = IngestSummary(domain)
    items = _items(plan, spec, domain, summary)
    inter_df, first = read_any(plan.inter_path)
    users, item_ids, ts = _interaction_columns(inter_df, plan, spec, first, 0, summary)
    return make_tables(domain, items, users, item_ids, ts, summary)


def table_chunks(path: Path, rows: int) -> Iterator[tuple[pd.DataFrame, int]]:
    """The table file in chunks of about ``rows`` rows, every column as text, with the line of each chunk's first
    row. A CSV that Arrow's streaming parser rejects is read whole by :func:`read_any`, which names the line."""
    name = path.name.lower().removesuffix(".gz")
    if name.endswith(".parquet"):
        check_nonempty(path)
        for batch in pq.ParquetFile(path).iter_batches(batch_size=rows):
            yield batch.to_pandas(), 1
        return
    if name.endswith((".jsonl", ".json", ".ndjson")):
        records: list[dict] = []
        first = 1
        for lineno, record in iter_records(path):
            if not records:
                first = lineno
            records.append(record)
            if len(records) == rows:
                yield pd.DataFrame.from_records(records), first
                records = []
        if records:
            yield pd.DataFrame.from_records(records), first
        return
    if not name.endswith((".csv", ".tsv", ".tab")):
        raise InputError(path, "unknown table format (use .csv, .tsv, .jsonl/.json or .parquet)")
    sep = "\t" if name.endswith((".tsv", ".tab")) else ","
    header = _header(path, sep)
    quoted = sep == ","
    line = 2
    try:
        reader = pa_csv.open_csv(
            pa.input_stream(str(path), compression="detect"),
            read_options=pa_csv.ReadOptions(column_names=header, skip_rows=1, block_size=max(rows * 64, 1 << 20)),
            parse_options=pa_csv.ParseOptions(delimiter=sep, quote_char='"' if quoted else False,
                                              newlines_in_values=quoted),
            convert_options=pa_csv.ConvertOptions(column_types={n: pa.string() for n in header},
                                                  strings_can_be_null=False, quoted_strings_can_be_null=False))
        for batch in reader:
            yield batch.to_pandas(), line
            line += batch.num_rows
    except (pa.ArrowInvalid, UnicodeDecodeError):
        read_any(path)   # raises the located error
        raise


def _header(path: Path, sep: str) -> list[str]:
    check_nonempty(path)
    with open_binary(path) as f:
        first = f.readline()
    try:
        text = first.decode("utf-8")
    except UnicodeDecodeError:
        read_any(path)   # raises the located error
        raise
    return next(csv.reader([text], delimiter=sep, quoting=csv.QUOTE_MINIMAL if sep == "," else csv.QUOTE_NONE))


def read_chunked(path: Path, domain: str, spec: GenericSpec, kind: str | None = None, chunk_rows: int = 1 << 20):
    """The items table, the summary, and the interactions as an iterator of ``(users, items, seconds)`` chunks of
    about ``chunk_rows`` rows: what :mod:`recbase.data.ingest_stream` needs to ingest a log larger than memory.
    The chunks are checked exactly as :func:`read` checks the whole file (errors name the same line)."""
    path = Path(path)
    plan = _plan(path, spec, kind)
    summary = IngestSummary(domain)
    items = _items(plan, spec, domain, summary)

    def chunks(counts: IngestSummary):
        """One pass over the file; rows skipped under ``bad_rows=skip`` are counted in ``counts``."""
        kept = 0
        for df, first in table_chunks(plan.inter_path, chunk_rows):
            users, item_ids, ts = _interaction_columns(df, plan, spec, first, kept, counts)
            kept += len(users)
            yield users, item_ids, ts

    return items, summary, chunks
