"""Download known public datasets, verify them, unpack them, and hand them to :func:`~recbase.data.ingest.ingest`.

Every download goes to ``<file>.part`` first (a second run resumes it with an HTTP range request when the server
supports one), is checked against its SHA-256, and only then renamed to its final name; a wrong checksum deletes
the partial file, so nothing unverified is ever left behind or unpacked. Registry entries carry the SHA-256
where one is published (``sha256_source`` says where). Entries without one are verified on first download and
their hash is recorded in ``<dest>/recbase-fetch.lock.json``; every later download must match it.
"""
from __future__ import annotations

import json
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from recbase.errors import UserError
from recbase.io import atomic_write_text, sha256_file

LOCK_FILE = "recbase-fetch.lock.json"
CHUNK = 1 << 20


class ChecksumError(UserError):
    """A downloaded file whose SHA-256 is not the recorded one."""


@dataclass(frozen=True)
class RemoteFile:
    url: str
    sha256: str | None = None   # None: verified on first download, then pinned in the lock file

    @property
    def name(self) -> str:
        return self.url.rstrip("/").rsplit("/", 1)[-1]


@dataclass(frozen=True)
class Dataset:
    files: tuple[RemoteFile, ...]
    format: str               # the reader that ingests it
    ingest_path: str = ""     # folder under <dest>/<name>/ given to the reader ("" = that folder)
    homepage: str = ""
    sha256_source: str = ""   # where the recorded hashes come from, or "" when none are published

    def describe(self) -> str:
        pinned = "sha256 recorded" if all(f.sha256 for f in self.files) else "sha256 pinned on first download"
        return f"{self.format}, {len(self.files)} file(s), {pinned}; {self.homepage}"


_GROUPLENS = "https://files.grouplens.org/datasets/movielens/"
_TFDS = "tensorflow/datasets tensorflow_datasets/url_checksums/movielens.txt (commit 1c076ac3)"
_MIND = "https://mind201910small.blob.core.windows.net/release/"
_AMAZON_2023 = "https://mcauleylab.ucsd.edu/public_datasets/data/amazon_2023/raw/"


def _amazon_2023(category: str) -> Dataset:
    return Dataset((RemoteFile(f"{_AMAZON_2023}review_categories/{category}.jsonl.gz"),
                    RemoteFile(f"{_AMAZON_2023}meta_categories/meta_{category}.jsonl.gz")),
                   "amazon2023", homepage="https://amazon-reviews-2023.github.io/")


REGISTRY: dict[str, Dataset] = {
    "ml-latest-small": Dataset(
        (RemoteFile(_GROUPLENS + "ml-latest-small.zip",
                    "696d65a3dfceac7c45750ad32df2c259311949efec81f0f144fdfb91ebc9e436"),),
        "movielens", "ml-latest-small", "https://grouplens.org/datasets/movielens/", _TFDS),
    "ml-100k": Dataset(
        (RemoteFile(_GROUPLENS + "ml-100k.zip", "50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229"),),
        "movielens", "ml-100k", "https://grouplens.org/datasets/movielens/", _TFDS),
    "ml-1m": Dataset(
        (RemoteFile(_GROUPLENS + "ml-1m.zip", "a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20"),),
        "movielens", "ml-1m", "https://grouplens.org/datasets/movielens/", _TFDS),
    "ml-25m": Dataset(
        (RemoteFile(_GROUPLENS + "ml-25m.zip", "8b21cfb7eb1706b4ec0aac894368d90acf26ebdfb6aced3ebd4ad5bd1eb9c6aa"),),
        "movielens", "ml-25m", "https://grouplens.org/datasets/movielens/", _TFDS),
    "mind-small-train": Dataset((RemoteFile(_MIND + "MINDsmall_train.zip"),), "mind",
                                homepage="https://msnews.github.io/"),
    "mind-small-dev": Dataset((RemoteFile(_MIND + "MINDsmall_dev.zip"),), "mind",
                              homepage="https://msnews.github.io/"),
    "amazon2023-all-beauty": _amazon_2023("All_Beauty"),
    "amazon2023-video-games": _amazon_2023("Video_Games"),
    "amazon2023-industrial-and-scientific": _amazon_2023("Industrial_and_Scientific"),
}


def download(url: str, target: Path, sha256: str | None = None) -> str:
    """Fetch ``url`` to ``target`` through ``target.part``; returns the SHA-256. Raises :class:`ChecksumError`
    (and deletes the partial file) when ``sha256`` is given and does not match."""
    part = target.with_name(target.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            resumed = have and response.status == 206   # a server that ignores Range sends 200: start over
            start = have if resumed else 0
            length = response.headers.get("Content-Length")
            with open(part, "ab" if resumed else "wb") as out, \
                    tqdm(total=start + int(length) if length else None, initial=start, unit="B", unit_scale=True,
                         desc=target.name, mininterval=1.0) as bar:
                for block in iter(lambda: response.read(CHUNK), b""):
                    out.write(block)
                    bar.update(len(block))
    except urllib.error.HTTPError as e:
        if not (have and e.code == 416):   # 416: the partial file is already complete
            raise
    digest = sha256_file(part)
    if sha256 and digest != sha256:
        part.unlink()
        raise ChecksumError(f"{url}: SHA-256 {digest} does not match the recorded {sha256}; download deleted")
    part.replace(target)
    return digest


def unpack(archive: Path, into: Path) -> None:
    """Extract a zip or tar archive into ``into`` through a temporary folder, so a crash leaves no half tree."""
    staging = Path(tempfile.mkdtemp(prefix=".unpack-", dir=into))
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as z:
                z.extractall(staging)
        else:
            with tarfile.open(archive) as t:
                t.extractall(staging, filter="data")
        for entry in staging.iterdir():
            final = into / entry.name
            if final.is_dir():
                shutil.rmtree(final)
            elif final.exists():
                final.unlink()
            entry.replace(final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _is_archive(path: Path) -> bool:
    return path.suffix == ".zip" or path.name.endswith((".tar", ".tar.gz", ".tgz", ".tar.bz2"))


def _read_lock(dest: Path) -> dict[str, str]:
    lock = dest / LOCK_FILE
    return json.loads(lock.read_text(encoding="utf-8")) if lock.exists() else {}


def fetch(name: str, dest: str | Path, registry: dict[str, Dataset] | None = None) -> Path:
    """Download (or reuse), verify and unpack dataset ``name`` under ``dest/<name>/``; returns the folder the
    reader should read."""
    registry = REGISTRY if registry is None else registry
    if name not in registry:
        raise UserError(f"unknown dataset {name!r}; known: {', '.join(sorted(registry))}")
    entry = registry[name]
    dest = Path(dest)
    folder = dest / name
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    lock = _read_lock(dest)
    try:
        for remote in entry.files:
            expected = remote.sha256 or lock.get(remote.url)
            target = folder / remote.name
            if target.exists() and expected and sha256_file(target) == expected:
                digest = expected
            else:
                digest = download(remote.url, target, expected)
            if not remote.sha256 and remote.url not in lock:
                lock[remote.url] = digest
                atomic_write_text(dest / LOCK_FILE, json.dumps(lock, indent=2, sort_keys=True) + "\n")
            if _is_archive(target):
                unpack(target, folder)
    except BaseException:
        if created and not any(folder.iterdir()):
            folder.rmdir()
        raise
    return folder / entry.ingest_path if entry.ingest_path else folder
