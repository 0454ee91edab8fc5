"""What every reader shares: precise input errors, line and CSV reading, and the item-table builder.

Structural problems (a missing file or column, a malformed row, a byte that is not UTF-8, an unparsable value,
an empty file) raise :class:`InputError` naming the file, line and field, because a half-read source would
silently change the dataset. Semantic problems (an interaction whose item has no metadata, duplicates, an item
with no text at all) are skipped and counted in the :class:`~recbase.data.tables.IngestSummary`.
"""
from __future__ import annotations

import ast
import bz2
import csv
import gzip
import io
import json
import re
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
from tqdm import tqdm

from recbase.data.tables import DomainTables, IngestSummary, make_interactions_table, make_items_table
from recbase.data.templates import clean_fields, field_order, text_of
from recbase.errors import UserError


class InputError(UserError):
    """Bad input, located: ``<file>, line <n>, field '<name>': <what is wrong>``."""

    def __init__(self, path, message: str, line: int | None = None, field: str | None = None):
        self.path, self.line, self.field = Path(path), line, field
        where = str(path)
        if line is not None:
            where += f", line {line}"
        if field is not None:
            where += f", field {field!r}"
        super().__init__(f"{where}: {message}")


def _decompressed(raw, path: Path):
    """``raw`` (a binary file) read through the decompressor that ``path``'s suffix names, if any."""
    if path.suffix == ".gz":
        return gzip.open(raw, "rb")
    if path.suffix == ".bz2":
        return bz2.open(raw, "rb")
    return raw


def open_binary(path: Path):
    """Open a file for reading, decompressing ``.gz`` and ``.bz2`` transparently."""
    return _decompressed(open(path, "rb"), path)


def _utf8_message(data: bytes, error: UnicodeDecodeError) -> str:
    return f"not valid UTF-8 (byte 0x{data[error.start]:02x} at column {error.start + 1})"


def check_nonempty(path: Path) -> None:
    if not path.exists():
        raise InputError(path, "file not found")
    with open_binary(path) as f:
        if not f.read(1):
            raise InputError(path, "file is empty")


def iter_lines(path: Path, desc: str | None = None) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, text)`` for each non-blank line, with a byte progress bar; invalid UTF-8 is an error."""
    check_nonempty(path)
    size = path.stat().st_size
    with open(path, "rb") as raw, tqdm(total=size, unit="B", unit_scale=True, desc=desc or path.name,
                                       leave=False, mininterval=1.0) as bar:
        for lineno, data in enumerate(_decompressed(raw, path), 1):
            if lineno % 65536 == 0:
                bar.update(raw.tell() - bar.n)
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as e:
                raise InputError(path, _utf8_message(data, e), line=lineno) from None
            if text.strip():
                yield lineno, text
        bar.update(raw.tell() - bar.n)


def parse_record(text: str, path: Path, lineno: int) -> dict:
    """One JSON-lines record; Python-literal lines (Amazon 2014 meta, Steam) are accepted too."""
    try:
        record = json.loads(text)
    except json.JSONDecodeError as e:
        try:
            record = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            raise InputError(path, f"malformed record ({e.msg} at column {e.colno})", line=lineno) from None
    if not isinstance(record, dict):
        raise InputError(path, f"expected an object, got {type(record).__name__}", line=lineno)
    return record


def iter_records(path: Path, desc: str | None = None) -> Iterator[tuple[int, dict]]:
    for lineno, text in iter_lines(path, desc):
        yield lineno, parse_record(text, path, lineno)


def require(record: dict, key: str, path: Path, lineno: int):
    """A field that must be present and non-empty."""
    value = record.get(key)
    if value is None or value == "":
        raise InputError(path, "missing field", line=lineno, field=key)
    return value


def first_invalid_utf8_line(path: Path) -> tuple[int, str]:
    with open_binary(path) as f:
        for lineno, data in enumerate(f, 1):
            try:
                data.decode("utf-8")
            except UnicodeDecodeError as e:
                return lineno, _utf8_message(data, e)
    return 0, "not valid UTF-8"


_PANDAS_LINE = re.compile(r"line (\d+)")


def _read_csv_arrow(source, sep: str, names: list[str], header: bool, encoding: str, quoting: int) -> pd.DataFrame:
    """Arrow's multithreaded CSV parser with every column as text: the fast path of :func:`read_csv`. It is
    stricter than pandas (any row of the wrong width fails), and anything it rejects is re-read by pandas to
    locate the problem."""
    quoted = quoting != csv.QUOTE_NONE
    table = pa_csv.read_csv(
        source,
        read_options=pa_csv.ReadOptions(column_names=names, skip_rows=1 if header else 0, encoding=encoding),
        parse_options=pa_csv.ParseOptions(delimiter=sep, quote_char='"' if quoted else False,
                                          newlines_in_values=quoted),
        convert_options=pa_csv.ConvertOptions(column_types={n: pa.string() for n in names},
                                              strings_can_be_null=False, quoted_strings_can_be_null=False))
    return table.to_pandas()


def read_csv(path: Path, columns: list[str] | None = None, sep: str = ",", header: bool = True,
             names: list[str] | None = None, encoding: str = "utf-8", quoting: int = csv.QUOTE_MINIMAL,
             data: str | None = None) -> pd.DataFrame:
    """Read a delimited file with every column as text, turning parse failures into located InputErrors.

    ``columns`` are required in the header; ``names`` name the columns of a header-less file. A row with more
    fields than the header is an error; a row with fewer reads as empty strings, which the id, number and time
    parsers below reject with its line. ``data`` reads already-decoded text instead of the file (the ``::`` DAT
    files).
    """
    if data is None:
        check_nonempty(path)
    elif not data.strip():
        raise InputError(path, "file is empty")

    def source():
        return io.BytesIO(data.encode("utf-8")) if data is not None else str(path)

    def pandas_read(**options):
        return pd.read_csv(source(), sep=sep, names=names, dtype=str, keep_default_na=False, na_filter=False,
                           encoding="utf-8" if data is not None else encoding, quoting=quoting, engine="c",
                           index_col=False, **options)

    first_line = 2 if header else 1
    try:
        header_names = list(pandas_read(header=0, nrows=0).columns) if header else names
        try:
            df = _read_csv_arrow(source(), sep, header_names, header, "utf-8" if data is not None else encoding,
                                 quoting)
        except pa.ArrowInvalid:
            with warnings.catch_warnings():
                # pandas only warns when the first data row is longer than the header; that is a malformed row.
                warnings.simplefilter("error", pd.errors.ParserWarning)
                df = pandas_read(header=0 if header else None)
    except UnicodeDecodeError:
        line, message = first_invalid_utf8_line(path)
        raise InputError(path, message, line=line) from None
    except pd.errors.ParserError as e:
        m = _PANDAS_LINE.search(str(e))
        raise InputError(path, f"malformed row: {str(e).split('error: ')[-1].strip()}",
                         line=int(m.group(1)) if m else None) from None
    except pd.errors.ParserWarning:
        raise InputError(path, "malformed row: more fields than the header", line=first_line) from None
    except pd.errors.EmptyDataError:
        raise InputError(path, "file is empty") from None
    for col in columns or []:
        if col not in df.columns:
            raise InputError(path, f"missing column (header has: {', '.join(map(str, df.columns))})",
                             line=1, field=col)
    return df


def int_column(df: pd.DataFrame, column: str, path: Path, first_line: int = 2) -> np.ndarray:
    """Parse an integer column exactly; the first value that is not an int64 integer (a fraction, too large, not a
    number) is an error naming its line (``first_line`` = data row 0). ``123.0`` is the integer 123."""
    series = df[column]
    try:   # fast path: Arrow's cast of clean integer text (it refuses fractions and overflow)
        return pc.cast(pa.array(series), pa.int64()).to_numpy()
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        pass
    text = series.astype(str).str.strip()
    integral = text.str.fullmatch(r"[+-]?\d+(\.0*)?").to_numpy(bool)
    digits = text.str.replace(r"\.0*$", "", regex=True)
    values = pd.to_numeric(digits.where(integral), errors="coerce").astype(float)
    bad = ~integral | (values.abs() >= 2.0 ** 63).to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        value = text.iloc[row]
        number = pd.to_numeric(value, errors="coerce")
        why = ("not a number" if pd.isna(number) or not np.isfinite(number) else "not a whole number" if number % 1
               else "out of the int64 range" if abs(number) >= 2.0 ** 63 else "not written as integer digits")
        raise InputError(path, f"{why}: {series.iloc[row]!r}", line=row + first_line, field=column)
    return digits.astype(np.int64).to_numpy()


# 0001-01-01T00:00:00Z .. 9999-12-31T23:59:59Z: what a calendar date can name; a unix time in milliseconds given as
# seconds (about 1.7e12) lies far beyond it
SECONDS_RANGE = (-62_135_596_800, 253_402_300_799)


def seconds_column(series: pd.Series, path: Path, first_line: int = 2, per_second: int = 1) -> np.ndarray:
    """Whole seconds since the epoch from unix times counted in units of ``1 / per_second`` s (1: seconds,
    1000: milliseconds, floored to the second). Exact: a fractional unit, a time outside years 1..9999 or a
    non-number is an error naming its line; nothing is rounded or wrapped."""
    units = int_column(pd.DataFrame({series.name: series}), series.name, path, first_line)
    seconds = units // per_second
    bad = (seconds < SECONDS_RANGE[0]) | (seconds > SECONDS_RANGE[1])
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        unit = "seconds" if per_second == 1 else "milliseconds"
        raise InputError(path, f"{series.iloc[row]!r} {unit} since 1970 is outside the years 1..9999 (a time in "
                               f"milliseconds or microseconds read as {unit}?)", line=row + first_line,
                         field=series.name)
    return seconds


def id_column(df: pd.DataFrame, column: str, path: Path, first_line: int = 2) -> pd.Series:
    """An id column as text, kept exactly as the source writes it; an empty id is an error naming its line."""
    empty = empty_ids(df, column)
    if empty.any():
        row = int(np.flatnonzero(empty)[0])
        raise InputError(path, "empty id", line=row + first_line, field=column)
    return df[column].astype(str)


def _fraction_of_a_second(path: Path, value, line: int, field: str) -> InputError:
    return InputError(path, f"{value!r} has a fraction of a second; the interactions table holds whole seconds, so "
                            f"round the times in the source", line=line, field=field)


def parse_time(value, fmt: str, path: Path, lineno: int, field: str) -> int:
    """Seconds since the epoch from ``unix``, ``unix_ms``, ``iso`` or a ``strftime`` pattern; naive times are UTC.

    The same rules as :func:`time_column`: whole seconds only (milliseconds are floored to the second), years
    1..9999."""
    if fmt in ("unix", "unix_ms"):
        return int(seconds_column(pd.Series([value], name=field), path, lineno, 1000 if fmt == "unix_ms" else 1)[0])
    try:
        if fmt == "iso":
            t = datetime.fromisoformat(str(value).strip().replace("Z", "+00:00"))
        else:
            t = datetime.strptime(str(value).strip(), fmt)
    except (TypeError, ValueError):
        raise InputError(path, f"not a time ({fmt}): {value!r}", line=lineno, field=field) from None
    if t.microsecond:
        raise _fraction_of_a_second(path, value, lineno, field)
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
    return int(t.timestamp())


def parse_times(series: pd.Series, fmt: str) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised :func:`parse_time` for a whole column: (whole seconds, mask of the values that are not an exact
    time: not a number or date, a fraction of a second, outside years 1..9999). Masked values read as 0."""
    if fmt in ("unix", "unix_ms"):
        per_second = 1000 if fmt == "unix_ms" else 1
        try:   # fast path: Arrow's cast of clean integer text (it refuses fractions and overflow)
            units, bad = pc.cast(pa.array(series), pa.int64()).to_numpy(), np.zeros(len(series), bool)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
            text = series.astype(str).str.strip()
            digits = text.str.replace(r"\.0*$", "", regex=True)
            bad = ~text.str.fullmatch(r"[+-]?\d+(\.0*)?").to_numpy(bool)
            bad |= pd.to_numeric(digits.where(~bad), errors="coerce").abs().to_numpy() >= 2.0 ** 63
            units = digits.where(~bad, "0").astype(np.int64).to_numpy()
        seconds = units // per_second
    else:
        parsed = pd.to_datetime(series, format="ISO8601" if fmt == "iso" else fmt, errors="coerce", utc=True)
        bad = parsed.isna().to_numpy().copy()
        since = (parsed - pd.Timestamp(0, tz="UTC")).to_numpy().astype("timedelta64[ns]").astype(np.int64)
        bad |= since % 1_000_000_000 != 0
        seconds = since // 1_000_000_000
    bad |= (seconds < SECONDS_RANGE[0]) | (seconds > SECONDS_RANGE[1])
    return np.where(bad, 0, seconds), bad


def time_column(series: pd.Series, fmt: str, path: Path, first_line: int = 2) -> np.ndarray:
    """:func:`parse_times`; the first value that is not an exact time is an error naming its line and why."""
    values, bad = parse_times(series, fmt)
    if not bad.any():
        return values
    row = int(np.flatnonzero(bad)[0])
    parse_time(series.iloc[row], fmt, path, row + first_line, series.name)   # raises with the reason
    raise InputError(path, f"not a time ({fmt}): {series.iloc[row]!r}", line=row + first_line, field=series.name)


def empty_ids(df: pd.DataFrame, column: str) -> np.ndarray:
    """Mask of rows whose id in ``column`` is missing or empty."""
    return (df[column].isna() | (df[column].astype(str) == "")).to_numpy()


def build_items(domain: str, kind: str, item_ids: list, fields: dict[str, list], summary: IngestSummary):
    """The items table: formatted text from ``fields`` (columns of raw values), raw fields kept as columns
    (cleaned as in the text). Items whose every field is empty carry no information for the embedder; they are
    skipped and counted."""
    names = field_order(kind, fields)
    ids, texts = [], []
    raw: dict[str, list] = {name: [] for name in names}
    for i, item_id in enumerate(item_ids):
        cleaned = clean_fields(kind, {name: fields[name][i] for name in names})
        if not cleaned:
            continue
        ids.append(str(item_id))
        texts.append(text_of(kind, cleaned))
        for name in names:
            raw[name].append(cleaned.get(name))
    summary.drop("item rows with no text fields", len(item_ids) - len(ids))
    return make_items_table(domain, ids, texts, raw)


def make_tables(domain: str, items, user_ids, item_ids, timestamps, summary: IngestSummary,
                extra: dict | None = None) -> DomainTables:
    return DomainTables(domain, items, make_interactions_table(domain, user_ids, item_ids, timestamps), summary,
                        extra or {})


def find_file(root: Path, patterns: list[str], what: str) -> Path:
    """The single file in folder ``root`` matching the first pattern that matches anything."""
    if not root.is_dir():
        raise InputError(root, "not a folder" if root.exists() else "path not found")
    for pattern in patterns:
        hits = sorted(p for p in root.glob(pattern) if p.is_file())
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise InputError(root, f"several {what} files match {pattern!r}: {', '.join(p.name for p in hits)}")
    raise InputError(root, f"no {what} file (looked for {', '.join(patterns)})")


def items_from_records(path: Path, domain: str, kind: str, id_key: str, fields_of, summary: IngestSummary,
                       skip_missing_id: bool = False):
    """Items from a JSON-lines catalog: ``fields_of(record)`` gives each item's template fields (same keys for
    every record). A record without an id is an error, or skipped and counted with ``skip_missing_id`` (for
    sources known to publish a few such rows)."""
    ids: list[str] = []
    columns: dict[str, list] = {}
    for lineno, record in iter_records(path, "items"):
        if skip_missing_id and record.get(id_key) in (None, ""):
            summary.drop(f"item rows without {id_key}")
            continue
        ids.append(str(require(record, id_key, path, lineno)))
        for name, value in fields_of(record).items():
            columns.setdefault(name, []).append(value)
    return build_items(domain, kind, ids, columns, summary)


def interactions_from_records(path: Path, user_key: str, item_key: str, time_key: str, time_format: str):
    """(users, items, seconds) from a JSON-lines log; a missing key or bad time is an error naming the line."""
    users, items, times = [], [], []
    for lineno, record in iter_records(path, "interactions"):
        users.append(str(require(record, user_key, path, lineno)))
        items.append(str(require(record, item_key, path, lineno)))
        times.append(parse_time(require(record, time_key, path, lineno), time_format, path, lineno, time_key))
    return users, items, times
