"""Goodreads (Wan & McAuley, RecSys 2018; https://mengtingwan.github.io/data/goodreads.html).

``goodreads_interactions_<genre>.json`` (JSON lines; every shelved book is an interaction, timed by
``date_added`` such as ``Tue Oct 17 09:39:58 -0700 2017``) and ``goodreads_books_<genre>.json`` (``book_id``,
``title``, ``authors`` as ids, ``publisher``, ``publication_year``, ``description``). When
``goodreads_book_authors.json`` sits beside them, author ids become names.
"""
from __future__ import annotations

from pathlib import Path

from recbase.data.readers.common import (find_file, interactions_from_records, items_from_records, iter_records,
                                         make_tables)
from recbase.data.tables import DomainTables, IngestSummary

KIND = "book"
DATE_FORMAT = "%a %b %d %H:%M:%S %z %Y"


def _author_names(folder: Path) -> dict[str, str]:
    names = {}
    for path in sorted(folder.glob("goodreads_book_authors.json*")):
        for _, record in iter_records(path, "authors"):
            names[str(record.get("author_id"))] = record.get("name")
    return names


def read(path: Path, domain: str) -> DomainTables:
    path = Path(path)
    books = find_file(path, ["goodreads_books*.json*"], "Goodreads books")
    interactions = find_file(path, ["goodreads_interactions*.json*"], "Goodreads interactions")
    authors = _author_names(books.parent)

    def fields(record: dict) -> dict:
        names = [authors.get(str(a.get("author_id"))) for a in record.get("authors") or [] if isinstance(a, dict)]
        return {"title": record.get("title"), "authors": names, "publisher": record.get("publisher"),
                "publication_year": record.get("publication_year"), "description": record.get("description")}

    summary = IngestSummary(domain)
    items = items_from_records(books, domain, KIND, "book_id", fields, summary)
    return make_tables(domain, items, *interactions_from_records(interactions, "user_id", "book_id", "date_added",
                                                                 DATE_FORMAT), summary)
