"""Readers of public dataset formats, one module per source; each returns a :class:`DomainTables`.

A reader is ``read(path, domain, **options) -> DomainTables`` and does no filtering: :func:`recbase.data.ingest.ingest`
applies :func:`recbase.data.tables.finalize` and writes the tables. Modules are imported on first use, so
listing the formats costs nothing.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Callable

from recbase.data.readers.common import InputError

# format name -> (module, function, what it reads)
FORMATS: dict[str, tuple[str, str, str]] = {
    "movielens": ("movielens", "read", "MovieLens CSV (ml-latest*, ml-25m), DAT (ml-1m, ml-10m) or ml-100k folder"),
    "amazon": ("amazon", "read", "Amazon reviews 2014/2018: reviews_*.json or <Category>.json + meta_*.json"),
    "amazon2023": ("amazon", "read_2023", "Amazon reviews 2023: <Category>.jsonl + meta_<Category>.jsonl"),
    "steam": ("steam", "read", "Steam (Kang & McAuley): steam_reviews.json + steam_games.json"),
    "goodreads": ("goodreads", "read", "Goodreads: goodreads_interactions_*.json + goodreads_books_*.json"),
    "mind": ("mind", "read", "MIND: news.tsv + behaviors.tsv (adds impressions.parquet)"),
    "yelp": ("yelp", "read", "Yelp open dataset: *business.json + *review.json"),
    "hm": ("hm", "read", "H&M (Kaggle): articles.csv + transactions_train.csv"),
    "p5": ("p5", "read", "P5 sequential split: sequential_data.txt + datamaps.json + item_titles.jsonl"),
    "recbole": ("recbole", "read", "RecBole atomic files: .text/.item + .inter (or UniSRec .test.inter + index files)"),
    "generic": ("generic", "read", "any items + interactions file (CSV/TSV/JSONL/Parquet) described by a spec"),
}

__all__ = ["FORMATS", "InputError", "get_reader", "default_domain"]


def get_reader(fmt: str) -> Callable:
    try:
        module, function, _ = FORMATS[fmt]
    except KeyError:
        raise ValueError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}") from None
    return getattr(importlib.import_module(f"recbase.data.readers.{module}"), function)


def default_domain(path: str | Path) -> str:
    """A domain name from the source path: its folder (or file stem) name, lower case, ``-`` for the rest."""
    p = Path(path)
    name = p.name if p.is_dir() else p.name.split(".")[0]
    cleaned = "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")
    return cleaned or "domain"
