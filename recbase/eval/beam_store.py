"""One model's beam of one split on disk, so that a later pass over the same users reads it instead of searching.

A seed's fusion pass searches the beam of its selected checkpoint for every validation (and test) user; the
ensemble of the seeds, and a rerun of the seed's own pass, need exactly that beam again, and the search is the
part of a pass that costs most after the teacher forcing. :func:`saved_or_searched` therefore writes each beam once
beside the seed's checkpoints::

    beam_<split>.parquet   one row per user, in the split's order: user_id, items (the beam's item ids, best
                           first), logp (each item's log P as float64, which holds the beam's float32 scores exactly)
    beam_<split>.json      the key the beam was searched under, the Parquet file's SHA-256 and the search's
                           seconds; removed before the Parquet file is replaced and written after it

and reads a beam back only when the key it asks for is the recorded one and the file's SHA-256 matches; anything
else is searched again and both files replaced (a damaged file is logged), so a stale or damaged beam is never
used. The key is what the beam depends on: the checkpoint's identity (the SHA-256 of its manifest), the split's
users, histories and targets, the catalog's item ids and tokens, the beam width and history cap, and what can
change the float32 scores' last bits: the retriever's batching (users and tokens per forward), device and dtype.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recbase.data.tables import read_table
from recbase.errors import UserError
from recbase.eval.leave_one_out import Beams, LeaveOneOutSet
from recbase.eval.retrieval import Retrieved, Retriever
from recbase.io import atomic_path, atomic_write_text, sha256_file
from recbase.train.checkpoint import weights_identity

log = logging.getLogger(__name__)


def beam_path(run_dir: str | Path, split: str) -> Path:
    """Where a seed's beam of ``split`` lies in its run folder."""
    return Path(run_dir) / f"beam_{split}.parquet"


def stamp_path(path: Path) -> Path:
    """The JSON stamp beside a beam file: its key, SHA-256 and search seconds."""
    return path.with_suffix(".json")


def _sha256(*arrays: np.ndarray, text: list[str] = ()) -> str:
    h = hashlib.sha256("\n".join(text).encode("utf-8"))
    for a in arrays:
        a = np.ascontiguousarray(a, np.int64)
        h.update(repr(a.shape).encode("ascii"))
        h.update(a.tobytes())
    return h.hexdigest()


def beam_key(checkpoint: str | Path, retriever: Retriever, loo: LeaveOneOutSet, item_ids: list[str],
             item_tokens: np.ndarray, max_history: int) -> dict:
    """What the beam of ``checkpoint`` (searched by ``retriever``) on ``loo`` depends on."""
    identity = weights_identity(checkpoint)
    if identity is None:
        raise UserError(f"{checkpoint}: neither a checkpoint folder with its manifest nor a Hugging Face export, so "
                        f"its beam cannot be named for reuse")
    lengths = np.fromiter((len(h) for h in loo.histories), np.int64, len(loo))
    flat = np.concatenate(loo.histories) if len(loo) else np.empty(0, np.int64)
    return {"checkpoint": identity, "split": loo.split,
            "users": _sha256(lengths, flat, loo.targets, text=loo.user_ids), "n_users": len(loo),
            "catalog": _sha256(item_tokens, text=item_ids), "beam_width": retriever.beam_width,
            "max_history": max_history, "batch_users": retriever.batch_users,
            "batch_tokens": retriever.batch_tokens, "device": retriever.device.type,
            "dtype": str(next(retriever.model.parameters()).dtype)}


def saved_or_searched(path: Path, key: dict, user_ids: list[str], search: Callable[[], Beams]) -> Beams:
    """The beam saved at ``path`` under ``key``; without one (or with a stale or damaged one), ``search()``,
    saved there for the next pass."""
    beams, why = _read(path, key)
    if beams is not None:
        return beams
    beams = search()
    beams.note = why
    _write(path, key, user_ids, beams)
    return beams


def _read(path: Path, key: dict) -> tuple[Beams | None, str]:
    """(the saved beam, where it was read from), or (None, why it cannot be used)."""
    stamp = stamp_path(path)
    if not (path.is_file() and stamp.is_file()):
        return None, "no saved beam"
    try:
        saved = json.loads(stamp.read_text(encoding="utf-8"))
        saved_key, digest, seconds = dict(saved["key"]), saved["sha256"], float(saved["seconds"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.warning("%s: unreadable (%s); searching the beam again", stamp, e)
        return None, f"{stamp.name} unreadable"
    changed = [k for k in key if saved_key.get(k) != key[k]]
    if changed:
        return None, f"the saved one has another {', '.join(changed)}"
    actual = sha256_file(path)
    if actual != digest:
        log.warning("%s: SHA-256 %s… does not match %s… recorded in %s; the file is damaged, searching the beam "
                    "again", path, actual[:16], digest[:16], stamp)
        return None, f"{path.name} damaged"
    table = read_table(path, required=("user_id", "items", "logp"))
    found = [Retrieved(items, scores) for items, scores in zip(table.column("items").to_pylist(),
                                                               table.column("logp").to_pylist())]
    return Beams(found, seconds, reused=True, note=f"read from {path}"), ""


def _write(path: Path, key: dict, user_ids: list[str], beams: Beams) -> None:
    """The beam, then its stamp; a kill in between leaves no stamp, so the beam is searched again."""
    stamp_path(path).unlink(missing_ok=True)
    table = pa.table({"user_id": pa.array(user_ids, pa.string()),
                      "items": pa.array([r.items for r in beams.found], pa.list_(pa.string())),
                      "logp": pa.array([r.scores for r in beams.found], pa.list_(pa.float64()))})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
        digest = sha256_file(tmp)
    atomic_write_text(stamp_path(path), json.dumps({"key": key, "sha256": digest,
                                                    "seconds": round(beams.seconds, 3)}, indent=2) + "\n")


def describe(beams: dict[str, Beams]) -> str:
    """One line: which beams were read back (with the search seconds that saved) and which were searched."""
    parts = [f"{name} reused ({b.note}: {b.seconds:.1f} s of search saved)" if b.reused else
             f"{name} searched in {b.seconds:.1f} s ({b.note})" for name, b in beams.items()]
    saved = sum(b.seconds for b in beams.values() if b.reused)
    return "beams: " + "; ".join(parts) + f"; {saved:.1f} s of beam search saved"
