"""Amazon reviews (McAuley lab, UCSD), three releases; every review is an interaction.

- 2014 (https://jmcauley.ucsd.edu/data/amazon/): ``reviews_<Category>[_5].json`` (JSON lines) and
  ``meta_<Category>.json``, whose lines are Python literals, not JSON. Categories are a list of paths.
- 2018 (https://nijianmo.github.io/amazon/): ``<Category>[_5].json`` and ``meta_<Category>.json``, both JSON
  lines; the category path is one list, description and features are lists.
- 2023 (https://amazon-reviews-2023.github.io/): ``<Category>.jsonl`` and ``meta_<Category>.jsonl``; items are
  keyed by ``parent_asin``, times are milliseconds.

``PATH`` is the folder holding one category (or the reviews file itself); files may be gzipped.
"""
from __future__ import annotations

import re
from pathlib import Path

from recbase.data.readers.common import InputError, interactions_from_records, items_from_records, make_tables
from recbase.data.tables import DomainTables, IngestSummary

KIND = "product"
_PRICE = re.compile(r"^\$?\s?\d[\d,]*(\.\d+)?( - \$?\d[\d,]*(\.\d+)?)?$")


def _category(reviews: Path) -> str:
    name = reviews.name.removesuffix(".gz").removesuffix(".bz2")
    name = name.rsplit(".", 1)[0]
    return name.removeprefix("reviews_").removesuffix("_5")


def _files(path: Path, suffix: str) -> tuple[Path, Path]:
    """(reviews, meta) for the category in ``path``."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "path not found")
    if path.is_file():
        reviews, folder = path, path.parent
    else:
        folder = path
        found = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("meta_")
                       and suffix in p.suffixes and p.suffix != ".part")
        if len(found) != 1:
            listed = ", ".join(p.name for p in found) or "none"
            raise InputError(path, f"expected one reviews file *{suffix}[.gz] besides meta_*, found: {listed}")
        reviews = found[0]
    metas = sorted(folder.glob(f"meta_{_category(reviews)}{suffix}*")) or sorted(folder.glob(f"meta_*{suffix}*"))
    if len(metas) != 1:
        raise InputError(folder, f"expected one meta_{_category(reviews)}{suffix}[.gz] file for {reviews.name}, "
                                 f"found: {', '.join(p.name for p in metas) or 'none'}")
    return reviews, metas[0]


def _price(value) -> str | None:
    """Prices as printed (``$12.99``); 2018 meta sometimes holds page markup in this field, which is dropped."""
    if isinstance(value, (int, float)):
        return f"${value:.2f}"
    if isinstance(value, str) and _PRICE.match(value.strip()):
        return value.strip()
    return None


def _flatten(categories) -> list[str]:
    """2014 category paths (a list of lists) or a 2018/2023 list, as unique names in order."""
    out: list[str] = []
    for entry in categories or []:
        for name in entry if isinstance(entry, list) else [entry]:
            if name and name not in out:
                out.append(name)
    return out


def _fields_2014_2018(record: dict) -> dict:
    description = record.get("description")
    return {
        "title": record.get("title"),
        "brand": record.get("brand"),
        "categories": _flatten(record.get("categories") or record.get("category")),
        "price": _price(record.get("price")),
        "features": record.get("feature"),
        "description": description if isinstance(description, (str, list)) else None,
    }


def _fields_2023(record: dict) -> dict:
    return {
        "title": record.get("title"),
        "brand": record.get("store"),
        "categories": _flatten(record.get("categories")) or record.get("main_category"),
        "price": _price(record.get("price")),
        "features": record.get("features"),
        "description": record.get("description"),
    }


def read(path: Path, domain: str) -> DomainTables:
    """2014 or 2018: the field names tell them apart per record."""
    reviews, meta = _files(path, ".json")
    summary = IngestSummary(domain)
    items = items_from_records(meta, domain, KIND, "asin", _fields_2014_2018, summary)
    return make_tables(domain, items, *interactions_from_records(reviews, "reviewerID", "asin", "unixReviewTime",
                                                                 "unix"), summary)


def read_2023(path: Path, domain: str) -> DomainTables:
    reviews, meta = _files(path, ".jsonl")
    summary = IngestSummary(domain)
    items = items_from_records(meta, domain, KIND, "parent_asin", _fields_2023, summary)
    return make_tables(domain, items, *interactions_from_records(reviews, "user_id", "parent_asin", "timestamp",
                                                                 "unix_ms"), summary)
