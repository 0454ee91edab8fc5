"""The pretraining domains' users, read in slices of bounded size and in shard order, for the shard build.

The shards order users by a seeded hash (:mod:`recbase.data.shards`). Slice ``s`` of ``n`` holds the users whose
hash falls in the ``s``-th of ``n`` equal ranges of the hash space, so the slices, taken in turn and each sorted
by hash, give the users in shard order, and the shards come out the same whatever ``n`` is. ``n`` is the tables'
row count over ``slice_rows``. With one slice the domains are read whole. Otherwise one pass over each domain's
interactions in batches sends every row of this task's users to its slice's Arrow file, in file order; then the
slices are read back one at a time and grouped by user as a whole domain would be. Memory holds one batch, one
slice and the catalogs' tokens, whatever the size of the logs; on disk a row costs its user id's bytes plus 24
(domain, offset, time, item row), and each slice file is deleted once read.
"""
from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from tqdm import tqdm

from recbase.data.codes import Codes
from recbase.data.sequences import (BATCH_ROWS, DomainSequences, domain_codes, group_users, interaction_batches,
                                    item_tokens, load_domain, stable_hash)

HASH_SPACE = 1 << 63   # stable_hash values lie in [0, HASH_SPACE)


def count_slices(domain_dirs: list[Path], slice_rows: int) -> int:
    """Slices of at most about ``slice_rows`` interactions each (from the Parquet footers, no data read)."""
    from recbase.data.tables import count_interactions

    rows = sum(count_interactions(d) for d in domain_dirs)
    return max(1, -(-rows // max(slice_rows, 1)))


def user_slices(domain_dirs: list[Path], codes: Codes, seed: int, task_index: int, num_tasks: int, n_slices: int,
                work_dir: Path) -> Iterator[list[DomainSequences]]:
    """Per slice, one :class:`DomainSequences` per domain of ``domain_dirs`` (in that order) with the slice's
    users of task ``task_index`` of ``num_tasks`` (one slice: every user, the task is picked later). Interactions
    of items without codes are counted in the first slice's ``skipped``. ``work_dir`` holds the slice files; it
    is emptied first, so a rerun after a crash starts it afresh."""
    if n_slices == 1:
        yield [load_domain(d, codes) for d in tqdm(domain_dirs, desc="read domains", unit="domain")]
        return
    import pyarrow as pa

    shutil.rmtree(work_dir, ignore_errors=True)
    work_dir.mkdir(parents=True)
    try:
        paths = [work_dir / f"{s:05d}.arrow" for s in range(n_slices)]
        tokens, skipped = _fill_slices(domain_dirs, codes, seed, task_index, num_tasks, paths)
        for s, path in enumerate(paths):
            with pa.OSFile(str(path)) as source:
                table = pa.ipc.open_file(source).read_all()
            path.unlink()
            domain = table["domain"].to_numpy()
            table = table.drop_columns(["domain"])
            yield [group_users(d.name, table.filter(pa.array(domain == i)), tokens[i],
                               skipped[i] if s == 0 else Counter()) for i, d in enumerate(domain_dirs)]
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)


def _fill_slices(domain_dirs: list[Path], codes: Codes, seed: int, task_index: int, num_tasks: int,
                 paths: list[Path]) -> tuple[list[np.ndarray], list[Counter]]:
    """One pass over every domain's interactions: each kept row (this task's users, items with codes) appended to
    the Arrow file of its user's slice. Returns each domain's item tokens and skipped counts."""
    import pyarrow as pa

    schema = pa.schema([("domain", pa.int32()), ("user_id", pa.string()), ("timestamp", pa.int64()),
                        ("row", pa.int64())])
    width = -(-HASH_SPACE // len(paths))
    tokens, skipped = [], []
    writers = [pa.ipc.new_file(str(p), schema) for p in paths]
    try:
        with tqdm(desc="slice users", unit="row", unit_scale=True, mininterval=1.0) as bar:
            for i, domain_dir in enumerate(domain_dirs):
                name = domain_dir.name
                item_ids, item_codes = domain_codes(domain_dir, codes)
                tokens.append(item_tokens(codes.vocab, item_codes))
                skipped.append(Counter())
                for table in interaction_batches(domain_dir, item_ids, skipped[-1]):
                    users = table["user_id"].combine_chunks().dictionary_encode()
                    names = users.dictionary.to_pylist()
                    slice_of = np.fromiter((_slice_of(u, name, seed, width, task_index, num_tasks) for u in names),
                                           np.int64, len(names))[users.indices.to_numpy()]
                    table = table.add_column(0, "domain", pa.array(np.full(table.num_rows, i, np.int32)))
                    for s in np.unique(slice_of[slice_of >= 0]):
                        writers[s].write_table(table.filter(pa.array(slice_of == s)), max_chunksize=BATCH_ROWS)
                    bar.update(table.num_rows)
    finally:
        for w in writers:
            w.close()
    return tokens, skipped


def _slice_of(user: str, domain: str, seed: int, width: int, task_index: int, num_tasks: int) -> int:
    """The slice of a user of this task (its seeded hash's range), or -1 for another task's user; the hashes are
    the shard build's (:func:`recbase.data.shards.user_hashes`)."""
    if num_tasks > 1 and stable_hash(domain, user) % num_tasks != task_index:
        return -1
    return stable_hash(seed, domain, user) // width
