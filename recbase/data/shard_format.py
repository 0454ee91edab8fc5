"""The shard files: WebDataset tars of blocks of users, the hash beside each tar and ``manifest.json``.

One tar entry per user would cost ~4 KB of tar header and padding per user, so each tar entry is a *block* of many
users stored as three files sharing one WebDataset key:

    <key>.tokens.u16   flat little-endian token array (``.tokens.u32`` when the vocabulary exceeds 65,536 ids)
    <key>.offsets.i64  little-endian int64 ``[n_users + 1]``; user ``i`` is ``tokens[offsets[i]:offsets[i+1]]``
    <key>.meta.json    ``{"users": [...], "domains": [...], "domain_names": [...], "label_from": [...]?}``

Tar members carry fixed mtimes, owners and modes, so the same blocks give the same bytes. A tar is written under a
temporary name and renamed, then ``<shard>.sha256`` beside it, which a rerun of the build checks. Each build task
writes ``tasks/task-<n>.json``; :func:`merge_manifests` joins them into ``manifest.json``, which the trainer reads
with :func:`read_manifest`; :func:`read_shard` checks a tar against the manifest and yields its decoded blocks.
This module needs neither pyarrow nor the tables, so the trainer's read side runs on a bare GPU machine
(docs/benchmarks.md).
"""
from __future__ import annotations

import io
import json
import os
import tarfile
from collections import Counter
from pathlib import Path
from typing import Iterator

import numpy as np
from webdataset import tariterators

from recbase.errors import UserError
from recbase.io import atomic_path, atomic_write_text, sha256_file
from recbase.vocab import Vocab

FORMAT = "recbase-shards/1"
MANIFEST = "manifest.json"
TASK_DIR = "tasks"


class ShardError(UserError):
    """A shard file that cannot be read as what the manifest says it is."""


def token_dtype(vocab: Vocab) -> np.dtype:
    """uint16 when every id fits (the paper's L=4, K=2048 needs 8,200), else uint32."""
    return np.dtype("<u2") if vocab.n_tokens <= 1 << 16 else np.dtype("<u4")


def shard_name(split: str, task_index: int, shard: int) -> str:
    return f"{split}-t{task_index:03d}-{shard:06d}.tar"


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def encode_block(tokens: np.ndarray, offsets: np.ndarray, meta: dict) -> dict[str, bytes]:
    """The three files of one block, by extension (see the module docstring)."""
    ext = "tokens.u16" if tokens.dtype.itemsize == 2 else "tokens.u32"
    return {ext: tokens.tobytes(),
            "offsets.i64": offsets.astype("<i8").tobytes(),
            "meta.json": json.dumps(meta, separators=(",", ":"), ensure_ascii=False).encode("utf-8")}


def decode_block(sample: dict, where: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """Inverse of :func:`encode_block` for a WebDataset sample; inconsistencies raise :class:`ShardError`."""
    key = sample.get("__key__", "?")
    try:
        meta = json.loads(sample["meta.json"])
        raw = sample.get("tokens.u16")
        tokens = np.frombuffer(raw, "<u2") if raw is not None else np.frombuffer(sample["tokens.u32"], "<u4")
        offsets = np.frombuffer(sample["offsets.i64"], "<i8")
    except (KeyError, ValueError) as e:
        raise ShardError(f"{where}: block '{key}' is corrupt ({type(e).__name__}: {e})") from None
    n = len(meta.get("users", []))
    if (len(offsets) != n + 1 or offsets[0] != 0 or offsets[-1] != len(tokens)
            or (n and np.any(np.diff(offsets) <= 0))):
        raise ShardError(f"{where}: block '{key}' has offsets that do not match its {len(tokens)} tokens and "
                         f"{n} users")
    return tokens, offsets, meta


def write_shard(path: Path, blocks: list[tuple[str, dict[str, bytes]]]) -> None:
    """Write ``blocks`` (key, files) as one deterministic tar, atomically, then its SHA-256 beside it
    (``<shard>.sha256``), which a rerun checks before it keeps the shard."""
    with atomic_path(path) as tmp:
        with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
            for key, files in blocks:
                for ext in sorted(files):
                    _add_member(tar, f"{key}.{ext}", files[ext])
        digest = sha256_file(tmp)
    atomic_write_text(digest_path(path), digest + "\n")


def digest_path(shard: Path) -> Path:
    """Where the SHA-256 written with ``shard`` lies."""
    return shard.with_name(shard.name + ".sha256")


def shard_is_intact(path: Path) -> bool:
    """True when ``path`` exists and matches the SHA-256 recorded when it was written."""
    digest = digest_path(path)
    return path.exists() and digest.exists() and digest.read_text().strip() == sha256_file(path)


def merge_manifests(root: str | Path, num_tasks: int, missing_ok: bool = False) -> Path | None:
    """Write ``manifest.json`` from the per-task manifests (the final step of an array job).

    With ``missing_ok`` a missing task returns None (another task will merge); otherwise it is an error.
    """
    root = Path(root)
    tasks = []
    for t in range(num_tasks):
        p = root / TASK_DIR / f"task-{t:03d}.json"
        if not p.exists():
            if missing_ok:
                return None
            raise FileNotFoundError(f"{p}: task {t} of {num_tasks} has not finished; rerun it before merging")
        tasks.append(json.loads(p.read_text(encoding="utf-8")))
    first = tasks[0]
    for t in tasks[1:]:
        if t["tokenizer_hash"] != first["tokenizer_hash"] or t["vocab"] != first["vocab"]:
            raise UserError(f"{root}: task {t['task_index']} used another tokenizer than task 0")
    shards = [s for t in tasks for s in t["shards"]]
    domains: dict = {}
    for t in tasks:
        for name, per_split in t["domains"].items():
            for sp, stats in per_split.items():
                acc = domains.setdefault(name, {}).setdefault(sp, Counter())
                acc.update(stats)
    totals: dict = {}
    for s in shards:
        acc = totals.setdefault(s["split"], Counter())
        acc.update({k: s[k] for k in ("users", "items", "tokens", "blocks", "bytes")})
        acc["shards"] += 1
    skipped: Counter = Counter()
    for t in tasks:
        skipped.update(t["skipped"])
    config = dict(first["config"])
    config.pop("task_index")
    manifest = {
        "format": FORMAT, "tokenizer_hash": first["tokenizer_hash"], "tokenizer": first.get("tokenizer", {}),
        "vocab": first["vocab"],
        "token_dtype": first["token_dtype"],
        "split": {"holdout": config["holdout"], "splits": sorted(totals),
                  "rule": "train = items[:-2h] (+eos when h=0), valid = items[:-h] labelled from label_from, "
                          "test = the last h items (never in shards)"},
        "totals": {sp: dict(c) for sp, c in sorted(totals.items())},
        "domains": {n: {sp: dict(c) for sp, c in v.items()} for n, v in sorted(domains.items())},
        "shards": shards, "eval_sets": first["eval_sets"], "skipped": dict(sorted(skipped.items())),
        "num_tasks": num_tasks, "config": config,
    }
    path = root / MANIFEST
    atomic_write_text(path, json.dumps(manifest, indent=2) + "\n")
    return path


def read_manifest(root: str | Path, expected_tokenizer_hash: str | None = None) -> dict:
    """Load ``manifest.json``; refuse it when its tokenizer hash differs from the expected one."""
    path = Path(root) / MANIFEST
    if not path.exists():
        raise UserError(f"{path}: no manifest (the build has not finished, or merge the task manifests with "
                        f"`recbase shards --merge`)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: not a readable manifest ({e}); rerun the shard build") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise UserError(f"{path}: not a shard manifest of format {FORMAT!r}; rerun the shard build")
    if expected_tokenizer_hash is not None and manifest["tokenizer_hash"] != expected_tokenizer_hash:
        raise UserError(f"{path}: shards were built with tokenizer {manifest['tokenizer_hash']}, but "
                        f"{expected_tokenizer_hash} is expected; rebuild the shards with this tokenizer's codes")
    return manifest


def read_shard(shard_dir: Path, shard: dict, keep: set | None = None) -> Iterator[tuple[np.ndarray, np.ndarray, dict]]:
    """Decoded blocks of one shard; a truncated or corrupt shard raises :class:`ShardError` naming it."""
    path = shard_dir / shard["path"]
    try:
        size = os.path.getsize(path)
    except OSError as e:
        raise ShardError(f"{path}: cannot open shard ({e})") from None
    if size != shard["bytes"]:
        raise ShardError(f"{path}: {size} bytes but the manifest says {shard['bytes']} (truncated or overwritten "
                         f"shard; rerun build_shards, which rebuilds it)")
    if "sha256" not in shard:
        raise ShardError(f"{shard_dir / MANIFEST}: no sha256 for {shard['path']}; the shards were built by an "
                         f"older recbase — rebuild them")
    if sha256_file(path) != shard["sha256"]:
        raise ShardError(f"{path}: SHA-256 does not match the manifest (damaged shard; rerun build_shards, which "
                         f"rebuilds it)")
    n = 0
    try:
        for sample in tariterators.tarfile_samples([{"url": str(path)}]):
            if keep is None or n in keep:
                yield decode_block(sample, str(path))
            n += 1
    except (tarfile.TarError, EOFError, OSError, ValueError) as e:
        raise ShardError(f"{path}: corrupt or truncated tar ({type(e).__name__}: {e})") from None
    if n != shard["blocks"]:
        raise ShardError(f"{path}: {n} blocks but the manifest says {shard['blocks']} (truncated shard)")
