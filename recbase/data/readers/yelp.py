"""Yelp Open Dataset (https://www.yelp.com/dataset): ``yelp_academic_dataset_business.json`` and
``yelp_academic_dataset_review.json``, JSON lines. Every review is an interaction; ``date`` is
``YYYY-MM-DD HH:MM:SS``. Business categories are one comma-separated string, rendered as a list.
"""
from __future__ import annotations

from pathlib import Path

from recbase.data.readers.common import find_file, interactions_from_records, items_from_records, make_tables
from recbase.data.tables import DomainTables, IngestSummary

KIND = "business"


def _fields(record: dict) -> dict:
    categories = record.get("categories")
    if isinstance(categories, str):
        categories = [c.strip() for c in categories.split(",")]
    return {"name": record.get("name"), "categories": categories, "city": record.get("city"),
            "state": record.get("state")}


def read(path: Path, domain: str) -> DomainTables:
    business = find_file(Path(path), ["*business.json*", "*business*.json*"], "Yelp business")
    reviews = find_file(Path(path), ["*review.json*", "*review*.json*"], "Yelp review")
    summary = IngestSummary(domain)
    items = items_from_records(business, domain, KIND, "business_id", _fields, summary)
    return make_tables(domain, items, *interactions_from_records(reviews, "user_id", "business_id", "date",
                                                                 "%Y-%m-%d %H:%M:%S"), summary)
