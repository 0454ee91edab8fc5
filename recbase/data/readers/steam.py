"""Steam (Kang & McAuley, ICDM 2018; https://cseweb.ucsd.edu/~jmcauley/datasets.html#steam_data).

``steam_reviews.json`` (every review an interaction: ``username``, ``product_id``, ``date`` as YYYY-MM-DD) and
``steam_games.json`` (``id``, ``title``/``app_name``, ``genres``, ``tags``, ``specs``, ``developer``, ...).
Both are Python-literal lines, as published; files may be gzipped. The published games file has a few rows
without ``id``: they are skipped and counted.
"""
from __future__ import annotations

from pathlib import Path

from recbase.data.readers.common import find_file, interactions_from_records, items_from_records, make_tables
from recbase.data.tables import DomainTables, IngestSummary

KIND = "game"


def _fields(record: dict) -> dict:
    return {
        "title": record.get("title") or record.get("app_name"),
        "genres": record.get("genres"),
        "tags": record.get("tags"),
        "specs": record.get("specs"),
        "developer": record.get("developer"),
        "publisher": record.get("publisher"),
        "release_date": record.get("release_date"),
    }


def read(path: Path, domain: str) -> DomainTables:
    games = find_file(Path(path), ["steam_games.json*", "*games*.json*"], "Steam games")
    reviews = find_file(Path(path), ["steam_reviews.json*", "*reviews*.json*"], "Steam reviews")
    summary = IngestSummary(domain)
    items = items_from_records(games, domain, KIND, "id", _fields, summary, skip_missing_id=True)
    return make_tables(domain, items, *interactions_from_records(reviews, "username", "product_id", "date",
                                                                 "%Y-%m-%d"), summary)
