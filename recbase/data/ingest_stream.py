"""Ingest of an interaction log larger than memory, in user buckets: the same tables as the whole-file ingest.

The filters and the sort of :func:`recbase.data.tables.finalize` all act within one user (deduplication of
(user, item, time) rows, the minimum-history filter, the history cut, the time order), so the log can be cut by
user and each piece finalized alone. Two passes over the file in chunks:

1. every user id (users are far fewer than interactions), sorted, then cut into buckets of about
   ``rows_per_bucket`` interactions each, as consecutive runs of the sorted ids;
2. every chunk's rows appended, in file order, to the Arrow file of their user's bucket.

Then each bucket in turn is finalized and appended to ``interactions.parquet``. Buckets are consecutive runs of
sorted users and keep file order inside, so the result holds the rows of the whole-file ingest in the same order
(with the same summary), while memory holds one chunk, one bucket and the user ids. The generic reader and the
MovieLens CSV layout read in chunks (``read_chunked`` in :mod:`recbase.data.readers.generic` and
:mod:`recbase.data.readers.movielens`); :func:`streams` says which datasets go this way.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from recbase.data.tables import (INTERACTION_SCHEMA, INTERACTIONS_FILE, ITEMS_FILE, DomainTables, IngestSummary,
                                 finalize, ingest_inputs, make_interactions_table, write_summary)
from recbase.io import atomic_path

ROWS_PER_BUCKET = 2_000_000   # interactions finalized at once: ~0.5 GB of working memory
CHUNK_ROWS = 1 << 18          # rows parsed at once: Arrow's CSV reading holds several such blocks (docs/data.md)


def _buckets(counts: np.ndarray, rows_per_bucket: int) -> np.ndarray:
    """Bucket of each sorted user: consecutive users until a bucket holds about ``rows_per_bucket`` rows."""
    before = np.cumsum(counts) - counts
    _, bucket = np.unique(before // max(rows_per_bucket, 1), return_inverse=True)
    return bucket.astype(np.int64)


def streams(fmt: str, path: str | Path) -> bool:
    """Whether dataset ``path`` of format ``fmt`` reads in chunks (and so ingests through :func:`ingest_stream`)."""
    return fmt == "generic" or (fmt == "movielens" and (Path(path) / "ratings.csv").exists())


def ingest_stream(path: str | Path, out_dir: str | Path, domain: str, spec=None, kind: str | None = None,
                  min_user_interactions: int = 15, max_history: int = 2500, interacted_items_only: bool = False,
                  rows_per_bucket: int = ROWS_PER_BUCKET, chunk_rows: int = CHUNK_ROWS,
                  fmt: str = "generic") -> IngestSummary:
    """Read a dataset of format ``fmt`` (``generic`` with its ``spec`` and ``kind``, or ``movielens``) in chunks and
    write ``out_dir/<domain>/`` like :func:`recbase.data.ingest.ingest`; returns the summary (also written as
    ``ingest_summary.json``)."""
    from recbase.data.readers import generic, movielens

    start = time.perf_counter()
    if fmt == "generic":
        items, summary, chunks = generic.read_chunked(Path(path), domain, spec, kind, chunk_rows)
    else:
        items, summary, chunks = movielens.read_chunked(Path(path), domain, chunk_rows)
    # Items once: duplicate ids keep their first row (what finalize does), so the buckets see a clean catalog.
    ids = items.column("item_id").to_pandas()
    dup = ids.duplicated().to_numpy()
    summary.drop("duplicate item rows", int(dup.sum()))
    items = items.filter(pa.array(~dup))
    summary.read_items = len(ids)

    # Pass 1: the users and their row counts.
    counts: dict[str, int] = {}
    with tqdm(desc=f"{domain}: count users", unit="row", unit_scale=True, mininterval=1.0) as bar:
        for users, _, _ in chunks(IngestSummary(domain)):   # skipped rows are counted in pass 2
            for u, n in users.value_counts(sort=False).items():
                counts[u] = counts.get(u, 0) + int(n)
            bar.update(len(users))
    order = sorted(counts)
    sorted_users = pa.array(order, pa.string())
    bucket_of = _buckets(np.fromiter((counts[u] for u in order), np.int64, len(order)), rows_per_bucket)
    n_buckets = int(bucket_of[-1]) + 1 if len(order) else 0
    del counts, order

    folder = Path(out_dir) / domain
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".buckets-", dir=folder) as tmp:
        # Pass 2: every row to its bucket's Arrow file, in file order.
        paths = [Path(tmp) / f"{b:05d}.arrow" for b in range(n_buckets)]
        writers = [pa.ipc.new_file(p, INTERACTION_SCHEMA) for p in paths]
        try:
            with tqdm(desc=f"{domain}: bucket rows", unit="row", unit_scale=True, mininterval=1.0) as bar:
                for users, item_ids, ts in chunks(summary):
                    table = make_interactions_table(domain, users, item_ids, ts)
                    rank = pc.index_in(table["user_id"], value_set=sorted_users).to_numpy()
                    bucket = bucket_of[rank]
                    for b in np.unique(bucket):
                        writers[b].write_table(table.filter(pa.array(bucket == b)))
                    bar.update(table.num_rows)
        finally:
            for w in writers:
                w.close()
        del sorted_users, bucket_of

        # Each bucket finalized alone, appended in user order.
        used = []
        with atomic_path(folder / INTERACTIONS_FILE) as out_tmp:
            with pq.ParquetWriter(out_tmp, INTERACTION_SCHEMA) as writer:
                for p in tqdm(paths, desc=f"{domain}: finalize buckets", unit="bucket"):
                    with pa.memory_map(str(p)) as source:
                        bucket_rows = pa.ipc.open_file(source).read_all()
                    part = finalize(DomainTables(domain, items, bucket_rows, IngestSummary(domain)),
                                    min_user_interactions, max_history)
                    part.summary.dropped.pop("duplicate item rows", None)
                    summary.add(part.summary)
                    writer.write_table(part.interactions)
                    if interacted_items_only:
                        used.append(pc.unique(part.interactions["item_id"]))
                    p.unlink()
    if interacted_items_only:
        keep = pc.is_in(items["item_id"], value_set=pc.unique(pa.chunked_array(used, pa.string()).combine_chunks()))
        summary.drop("items no kept interaction uses", items.num_rows - pc.sum(keep).as_py() if items.num_rows else 0)
        items = items.filter(keep)
    with atomic_path(folder / ITEMS_FILE) as tmp_items:
        pq.write_table(items, tmp_items)
    summary.items = items.num_rows
    summary.seconds = time.perf_counter() - start
    write_summary(folder, ingest_inputs(fmt, path, min_user_interactions, max_history, interacted_items_only, 0),
                  summary)
    return summary
