"""Training checkpoints on disk: layout, publication, integrity, resolution, safe loading and consolidation.

A checkpoints folder (``checkpoint.dir``) holds::

    global_step<N>/            one complete checkpoint: DeepSpeed's files, trainer_state_rank<r>.pt,
                               recbase.json (what the weights are) and checkpoint_manifest.json (written last)
    .partial-global_step<N>/   a save in progress; never read, removed when that step is saved again
    latest                     the tag of the newest published checkpoint, replaced atomically

A save writes everything into the partial folder, records the SHA-256 of every file in the manifest, renames
the folder to its final name and only then moves ``latest``. A ``kill -9`` at any point therefore leaves either
the previous checkpoints untouched or one more complete checkpoint, and resolution only ever picks a folder
whose manifest exists. Every file is checked against the manifest before anything is loaded from it, and tensors
are read with ``torch.load(weights_only=True)`` (DeepSpeed's own loads included), so a checkpoint folder can
never run code. The DeepSpeed engine itself lives in :mod:`recbase.train.engine`; this module needs no process
group, so export and evaluation use it alone.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import re
import shutil
from pathlib import Path
from typing import Iterator

import torch

from recbase.errors import UserError
from recbase.io import atomic_write_text, sha256_file

RANK_STATE = "trainer_state_rank{rank}.pt"
META_FILE = "recbase.json"
MANIFEST_FILE = "checkpoint_manifest.json"
TP_CONSOLIDATED = "autotp_consolidated.pt"
LATEST = "latest"
_TAG = re.compile(r"global_step(\d+)")

# model_config keys that do not change what the weights mean
_RUNTIME_ONLY_KEYS = {"transformers_version", "_attn_implementation", "_attn_implementation_autoset",
                      "attn_implementation", "use_cache", "dtype", "torch_dtype", "output_attentions",
                      "output_hidden_states", "return_dict"}


def checkpoint_tag(step: int) -> str:
    return f"global_step{step}"


def partial_tag(step: int) -> str:
    return f".partial-{checkpoint_tag(step)}"


def file_hashes(folder: Path, exclude: tuple[str, ...] = ()) -> dict[str, str]:
    """SHA-256 of every file under ``folder`` (relative POSIX paths), except the names in ``exclude``."""
    return {p.relative_to(folder).as_posix(): sha256_file(p)
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name not in exclude}


def verify_files(folder: Path, expected: dict[str, str], what: str) -> None:
    """Refuse ``folder`` unless every file of ``expected`` is there with its recorded SHA-256."""
    for name, digest in expected.items():
        path = folder / name
        if not path.is_file():
            raise UserError(f"{path}: missing, but {what} lists it; the folder is incomplete — copy it again")
        actual = sha256_file(path)
        if actual != digest:
            raise UserError(f"{path}: SHA-256 {actual[:16]}… does not match {digest[:16]}… recorded in {what}; "
                            f"the file is damaged — restore it or use another checkpoint")


# ---------------------------------------------------------------------------------------------- publication

def begin(ckpt_dir: str | Path, step: int) -> Path:
    """The empty partial folder a save of ``step`` writes into (left-overs of a killed save are removed)."""
    partial = Path(ckpt_dir) / partial_tag(step)
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    return partial


def publish(ckpt_dir: str | Path, step: int) -> Path:
    """Seal the partial folder of ``step``: manifest last, rename to ``global_step<N>``, then move ``latest``."""
    ckpt_dir = Path(ckpt_dir)
    partial, final = ckpt_dir / partial_tag(step), ckpt_dir / checkpoint_tag(step)
    manifest = {"step": step, "files": file_hashes(partial, exclude=(MANIFEST_FILE,))}
    atomic_write_text(partial / MANIFEST_FILE, json.dumps(manifest, indent=2) + "\n")
    if final.exists():    # a rerun from an older checkpoint saves this step again
        stale = ckpt_dir / f".replaced-{final.name}"
        shutil.rmtree(stale, ignore_errors=True)
        final.rename(stale)
        shutil.rmtree(stale)
    partial.rename(final)
    atomic_write_text(ckpt_dir / LATEST, final.name + "\n")
    return final


# ---------------------------------------------------------------------------------------------- resolution

def is_complete(folder: Path) -> bool:
    return (folder / MANIFEST_FILE).is_file() and _TAG.fullmatch(folder.name) is not None


def complete_checkpoints(ckpt_dir: str | Path) -> list[Path]:
    """Published checkpoint folders of ``ckpt_dir``, oldest first."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    found = [p for p in ckpt_dir.iterdir() if p.is_dir() and is_complete(p)]
    return sorted(found, key=lambda p: int(_TAG.fullmatch(p.name).group(1)))


def resolve(path: str | Path) -> tuple[Path | None, str]:
    """``(folder, why)``: ``path`` itself when it is a checkpoint folder, else the newest complete checkpoint in
    it (``None`` when there is none). ``why`` says how the folder was chosen, for the log."""
    path = Path(path)
    if _TAG.fullmatch(path.name) and path.is_dir():
        if not is_complete(path):
            raise UserError(f"{path}: no {MANIFEST_FILE}, so this checkpoint was never completed (its save was "
                            f"interrupted); resume from its parent folder to use the newest complete one")
        return path, "as given"
    found = complete_checkpoints(path)
    if not found:
        return None, f"no complete checkpoint in {path}"
    newest = found[-1]
    pointer = path / LATEST
    named = pointer.read_text(encoding="utf-8").strip() if pointer.is_file() else ""
    why = f"newest complete checkpoint of {len(found)} in {path}"
    if named != newest.name:
        why += f"; '{LATEST}' names {named or 'nothing'} (a save was cut short)"
    return newest, why


def read_manifest(folder: Path) -> dict:
    return json.loads((folder / MANIFEST_FILE).read_text(encoding="utf-8"))


def verify(folder: Path) -> None:
    """Check every file of a checkpoint folder against its manifest (before anything is loaded from it)."""
    verify_files(folder, read_manifest(folder)["files"], str(folder / MANIFEST_FILE))


def read_meta(folder: Path) -> dict:
    return json.loads((folder / META_FILE).read_text(encoding="utf-8"))


def check_tokenizer(folder: Path, tokenizer_hash: str) -> None:
    """Refuse to resume from ``folder`` when it was trained on shards of another tokenizer (reads only
    ``recbase.json``, so it runs before any process group, model or weight exists)."""
    meta = read_meta(folder)
    if meta.get("tokenizer_hash") != tokenizer_hash:
        raise UserError(f"{folder / META_FILE}: the checkpoint was trained on shards of tokenizer "
                        f"{meta.get('tokenizer_hash')}, but data.shards holds tokenizer {tokenizer_hash}; point "
                        f"data.shards at the shards of the checkpoint's tokenizer, or start a new checkpoint.dir")


def weights_identity(path: str | Path) -> str | None:
    """What names the weights at ``path`` wherever they lie: the SHA-256 of the weight hashes a Hugging Face
    export records, or of a checkpoint folder's manifest (the newest complete one of a checkpoints folder); None
    when ``path`` is neither."""
    path = Path(path)
    try:
        if (path / META_FILE).is_file() and not is_complete(path):
            weights = json.loads((path / META_FILE).read_text(encoding="utf-8"))["weights_sha256"]
            return hashlib.sha256(json.dumps(weights, sort_keys=True).encode("utf-8")).hexdigest()
        folder = path if is_complete(path) else (complete_checkpoints(path) or [None])[-1]
        return sha256_file(folder / MANIFEST_FILE) if folder is not None else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def check_init(folder: Path, init_from: str) -> None:
    """Refuse to resume from ``folder`` when it belongs to a run that started from other weights
    (``checkpoint.init_from``): a fine-tuning pointed at a pretraining's checkpoints folder, or the reverse, would
    otherwise continue that run and write its checkpoints there. The same weights are the same folder, or, where
    the checkpoint recorded them (``init_weights``), the same :func:`weights_identity` under another path (a run
    folder copied or moved, a relative path read from another working directory)."""
    meta = read_meta(folder)
    saved = meta.get("train_config", {}).get("checkpoint", {})
    if "init_from" not in saved:
        return
    then, now = saved["init_from"], init_from
    if then and now:
        recorded = meta.get("init_weights")
        same = Path(then).resolve() == Path(now).resolve() or (recorded is not None
                                                                and recorded == weights_identity(now))
    else:
        same = then == now
    if not same:
        then, now = then or "random weights", now or "random weights"
        raise UserError(f"{folder / META_FILE}: the checkpoint belongs to a run started from {then}, this one starts "
                        f"from {now}; choose another checkpoint.dir for this run")


def check_model_config(folder: Path, model_config: dict) -> None:
    """Refuse to resume from ``folder`` when this run's model differs in anything but runtime settings."""
    saved, now = read_meta(folder).get("model_config", {}), json.loads(json.dumps(model_config))
    changed = sorted(k for k in set(saved) | set(now)
                     if k not in _RUNTIME_ONLY_KEYS and saved.get(k) != now.get(k))
    if changed:
        what = ", ".join(f"{k}: {saved.get(k)!r} in the checkpoint, {now.get(k)!r} now" for k in changed[:4])
        raise UserError(f"{folder / META_FILE}: the model config differs from the checkpoint's ({what}); resume "
                        f"with the checkpoint's model settings, or start a new checkpoint.dir")


# ---------------------------------------------------------------------------------------------- loading

def _deepspeed_globals() -> list:
    """The non-tensor classes DeepSpeed writes into its checkpoint files (allowed by the weights-only loader)."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [ZeroStageEnum, LossScaler, fragment_address]


@contextlib.contextmanager
def weights_only_loads() -> Iterator[None]:
    """Make every ``torch.load`` in the block weights-only, also those inside DeepSpeed that pass
    ``weights_only=False`` (torch honours ``TORCH_FORCE_WEIGHTS_ONLY_LOAD`` over the argument)."""
    saved = {k: os.environ.get(k) for k in ("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")}
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
    try:
        with torch.serialization.safe_globals(_deepspeed_globals()):
            yield
    except pickle.UnpicklingError as e:
        raise UserError(f"a checkpoint file holds objects other than tensors and plain values, refused without "
                        f"running them ({str(e).splitlines()[0]})") from None
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def load_tensors(path: Path):
    """One checkpoint file, weights-only."""
    with weights_only_loads():
        return torch.load(path, map_location="cpu", weights_only=True)


def consolidated_state_dict(folder: Path, prefix: str = "lm.") -> dict[str, torch.Tensor]:
    """Full fp32 weights from a verified checkpoint folder of any ZeRO stage, in one process without a process
    group.

    ZeRO-1/2/3 folders are merged from their per-rank shards by DeepSpeed's ``zero_to_fp32``; a stage-0 folder
    already holds the whole module; an AutoTP folder holds the weights DeepSpeed gathered at save time. Only keys
    under ``prefix`` (the training wrapper's language model) are kept, without the prefix.
    """
    verify(folder)
    if (folder / TP_CONSOLIDATED).exists():
        state = load_tensors(folder / TP_CONSOLIDATED)
    elif any(folder.glob("*optim_states.pt")) and any(folder.glob("*zero_pp_rank_*")):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        with weights_only_loads():
            state = get_fp32_state_dict_from_zero_checkpoint(str(folder.parent), tag=folder.name)
    else:
        states = sorted(folder.glob("mp_rank_*_model_states.pt"))
        if not states:
            raise UserError(f"{folder}: no DeepSpeed model states (mp_rank_*_model_states.pt)")
        state = load_tensors(states[0])["module"]
    return {k[len(prefix):]: v.float() for k, v in state.items() if k.startswith(prefix)}
