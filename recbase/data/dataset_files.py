"""The files a dataset is read from, known by their SHA-256, so that the pipeline runner notices a dataset edited in
place or replaced by a new download.

Hashing a dataset of many megabytes on every run would cost more than the check is worth, so the hashes are kept
in a small JSON cache keyed by the file's absolute path, size and modification time (``mtime_ns``): a file whose
size and mtime are those it had when it was hashed is not read again, and any other is hashed again (streamed).
A ``touch`` therefore costs one read of that file and nothing more, as long as its bytes are the same.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from recbase.data.readers.common import InputError
from recbase.io import atomic_write_text, sha256_file


def dataset_hashes(fmt: str, path: str | Path, options: dict, cache: Path) -> dict[str, str]:
    """``{file relative to the dataset folder: SHA-256}`` of the files dataset ``path`` of format ``fmt`` is read
    from (:func:`dataset_files`), through the hash ``cache``."""
    folder = _folder(Path(path))
    return {os.path.relpath(p, folder): digest
            for p, digest in file_hashes(dataset_files(fmt, path, options), cache).items()}


def dataset_files(fmt: str, path: str | Path, options: dict) -> list[Path]:
    """The files that dataset ``path`` of format ``fmt`` (with the reader's ``options``) is read from.

    A generic spec names its two files, and they are those. The other readers find their files themselves, each by
    name patterns of its own in the dataset folder (MovieLens by layout, Amazon by category, RecBole by suffix), and
    expose no list of them; so for them it is every regular file directly in the dataset folder (the folder a file
    path lies in), never a subfolder. That covers whichever files they pick without a second copy of their lookup
    rules, and a changed file the reader does not read costs one ingest whose tables come out byte-equal, after
    which no later stage runs again (they are known by the tables' content)."""
    path = Path(path)
    if fmt == "generic":
        from recbase.data.readers.generic import input_files

        return list(input_files(path, options["spec"]))
    return sorted(p for p in _folder(path).iterdir() if p.is_file())


def _folder(path: Path) -> Path:
    """The dataset folder: ``path``, or the folder of a file path (as the readers take it)."""
    return path if path.is_dir() else path.parent


def file_hashes(files: list[Path], cache: Path) -> dict[Path, str]:
    """``{file: SHA-256}``, read from ``cache`` for every file whose size and mtime are unchanged since it was hashed,
    and hashed (then cached) otherwise. A missing file is an error naming it."""
    known = _read_cache(cache)
    hashes, hashed = {}, {}
    for p in files:
        if not p.is_file():
            raise InputError(p, "not a file" if p.exists() else "file not found")
        st = p.stat()   # before reading, so that a file changed while it is read is hashed again next time
        key = str(p.resolve())
        entry = known.get(key, {})
        if (entry.get("size"), entry.get("mtime_ns")) != (st.st_size, st.st_mtime_ns):
            entry = hashed[key] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256_file(p)}
        hashes[p] = entry["sha256"]
    if hashed:
        atomic_write_text(cache, json.dumps(known | hashed, indent=1, sort_keys=True) + "\n")
    return hashes


def _read_cache(cache: Path) -> dict[str, dict]:
    """The cached entries; an unreadable cache is an empty one (every file is hashed again and the cache rewritten)."""
    try:
        entries = json.loads(cache.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(entries, dict):
        return {}
    return {k: v for k, v in entries.items() if isinstance(v, dict) and isinstance(v.get("sha256"), str)}
