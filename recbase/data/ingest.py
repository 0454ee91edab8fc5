"""One call from a raw dataset to the two tables: read, filter (:func:`~recbase.data.tables.finalize`), write.

``ingest("movielens", "ml-latest-small", "data")`` writes ``data/ml-latest-small/items.parquet``,
``interactions.parquet`` and ``ingest_summary.json`` (the printed summary, as JSON).
"""
from __future__ import annotations

import time
from pathlib import Path

from recbase.data.readers import default_domain, get_reader
from recbase.data.tables import (DomainTables, IngestSummary, check_domain_name, check_replaceable, finalize,
                                 ingest_inputs, write_domain, write_summary)

MIN_USER_INTERACTIONS = 15   # the paper's filter: users with fewer interactions are dropped
MAX_HISTORY = 2500           # the paper's cut: only the last 2,500 interactions of a user are kept


def read_domain(fmt: str, path: str | Path, domain: str | None = None,
                min_user_interactions: int = MIN_USER_INTERACTIONS, max_history: int = MAX_HISTORY,
                interacted_items_only: bool = False, max_users: int = 0, **options) -> DomainTables:
    """Read ``path`` in format ``fmt`` and apply the filters; nothing is written."""
    start = time.perf_counter()
    tables = get_reader(fmt)(Path(path), check_domain_name(domain or default_domain(path)), **options)
    tables = finalize(tables, min_user_interactions=min_user_interactions, max_history=max_history,
                      interacted_items_only=interacted_items_only, max_users=max_users)
    tables.summary.seconds = time.perf_counter() - start
    return tables


def ingest(fmt: str, path: str | Path, out_dir: str | Path, domain: str | None = None,
           min_user_interactions: int = MIN_USER_INTERACTIONS, max_history: int = MAX_HISTORY,
           interacted_items_only: bool = False, max_users: int = 0, overwrite: bool = False,
           **options) -> IngestSummary:
    """Read, filter and write one domain under ``out_dir/<domain>/``; returns its summary.

    Tables already there that came from other inputs are replaced only with ``overwrite``
    (:func:`~recbase.data.tables.check_replaceable`), checked before anything is read. The generic format and
    MovieLens's CSV layout read their interactions in chunks and finalize them in user buckets
    (:mod:`recbase.data.ingest_stream`), so a log larger than memory ingests; the other readers read whole files,
    and so does an ingest that samples users (``max_users``: the sample is drawn over all users at once).
    """
    from recbase.data.ingest_stream import ingest_stream, streams

    domain = check_domain_name(domain or default_domain(path))
    inputs = ingest_inputs(fmt, path, min_user_interactions, max_history, interacted_items_only, max_users)
    check_replaceable(Path(out_dir) / domain, inputs, overwrite)
    if streams(fmt, path) and not max_users:
        return ingest_stream(path, out_dir, domain, min_user_interactions=min_user_interactions,
                             max_history=max_history, interacted_items_only=interacted_items_only, fmt=fmt,
                             **options)
    tables = read_domain(fmt, path, domain, min_user_interactions, max_history, interacted_items_only, max_users,
                         **options)
    write_summary(write_domain(tables, out_dir), inputs, tables.summary)
    return tables.summary
