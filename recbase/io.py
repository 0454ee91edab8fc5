"""Atomic file output: write under a temporary name in the same folder, then rename.

A crash or a kill therefore never leaves a half-written file under the final name, and a rerun can trust any
file that exists.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import Iterator

from recbase.errors import UserError


def current_umask() -> int:
    """The process umask, read without changing it where Linux reports it (``os.umask`` can only be read by
    setting it, which another thread could observe)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    The file gets the mode a plain ``open`` would give it (0666 less the umask), not the 0600 of a temporary
    file, so the other users of a shared folder can read what a run wrote."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~current_umask())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def plain_name(name: str, what: str, becomes: str) -> str:
    """Refuse a name that becomes a folder unless it is plain (letters, digits, ``.``, ``_``, ``-``, starting with
    a letter or digit), so that it can never point outside its parent folder (``../x``, ``/abs``, ``a/b``)."""
    if not _PLAIN_NAME.fullmatch(name):
        raise UserError(f"{what} {name!r} is not a plain name: use letters, digits, '.', '_' and '-', starting with "
                        f"a letter or digit (it becomes the folder {becomes})")
    return name


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
