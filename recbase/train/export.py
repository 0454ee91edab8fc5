"""Hugging Face export of a training checkpoint, and :func:`load_model` for the stages that use a trained model.

An export is a ``save_pretrained`` folder (loadable by ``AutoModelForCausalLM.from_pretrained``) with
``recbase.json`` beside the weights: the tokenizer hash the model was trained with, the vocabulary layout, the
step and the training config. :func:`load_model` accepts such a folder or a DeepSpeed checkpoint folder of any
ZeRO stage (shards are consolidated in one process), so evaluation never needs the training job.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from recbase.errors import UserError
from recbase.io import atomic_write_text, sha256_file
from recbase.train import checkpoint as ckpt

META_FILE = ckpt.META_FILE
HEAD_FILE = "embedding_head.safetensors"   # the next-item embedding head's weights beside the language model's
TEXT_INPUTS_FILE = "text_inputs.safetensors"   # the projection of the items' text vectors into the input embeddings
SOURCE_KEY = "checkpoint_manifest_sha256"   # in an export's recbase.json: the checkpoint it was made from


def is_hf_export(path: Path) -> bool:
    return (path / "config.json").exists() and any(path.glob("*.safetensors"))


def read_export_meta(path: Path) -> dict:
    """``recbase.json`` of an export, after checking every weight file against the SHA-256 it records."""
    meta_path = path / META_FILE
    if not meta_path.is_file():
        raise UserError(f"{meta_path}: missing; this folder was not exported by recbase, so nothing says which "
                        f"tokenizer its ids belong to — export the checkpoint with `recbase export`")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    recorded = meta.get("weights_sha256")
    if not recorded:
        raise UserError(f"{meta_path}: no 'weights_sha256'; the weights cannot be checked — export the checkpoint "
                        f"again with `recbase export`")
    unlisted = sorted({p.name for p in path.glob("*.safetensors")} - set(recorded))
    if unlisted:
        raise UserError(f"{path / unlisted[0]}: not listed in {meta_path}'s weights_sha256; remove it or export again")
    ckpt.verify_files(path, recorded, f"{meta_path} (weights_sha256)")
    return meta


def load_state(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(fp32 state dict with Hugging Face names, recbase meta) of an export or a checkpoint folder."""
    path = Path(path)
    if is_hf_export(path):
        from safetensors.torch import load_file

        meta = read_export_meta(path)
        state = {}
        for f in sorted(path.glob("*.safetensors")):
            if f.name not in (HEAD_FILE, TEXT_INPUTS_FILE):
                state.update({k: v.float() for k, v in load_file(str(f)).items()})
        return state, meta
    folder = _checkpoint_folder(path)
    return ckpt.consolidated_state_dict(folder), ckpt.read_meta(folder)


def _checkpoint_folder(path: Path) -> Path:
    folder, why = ckpt.resolve(path)
    if folder is None:
        raise UserError(f"{path}: neither a Hugging Face export (config.json + *.safetensors) nor a checkpoint "
                        f"folder (global_step<N>/ with {ckpt.MANIFEST_FILE}) or a folder of them ({why})")
    return folder


def _module_state(path: str | Path, file: str, prefix: str) -> dict[str, torch.Tensor] | None:
    """The weights of a module trained beside the language model (``file`` in an export, keys under ``prefix``
    in a checkpoint folder), or None when the model was trained without it."""
    path = Path(path)
    if is_hf_export(path):
        from safetensors.torch import load_file

        read_export_meta(path)   # checks the module's file's hash with the others
        extra = path / file
        return {k: v.float() for k, v in load_file(str(extra)).items()} if extra.exists() else None
    state = ckpt.consolidated_state_dict(_checkpoint_folder(path), prefix=prefix)
    return state or None


def load_head_state(path: str | Path) -> dict[str, torch.Tensor] | None:
    """The next-item embedding head's weights (:mod:`recbase.train.embedding_head`) of an export or a checkpoint
    folder, or None when the model was trained without one."""
    from recbase.train.embedding_head import STATE_PREFIX

    return _module_state(path, HEAD_FILE, STATE_PREFIX)


def load_text_inputs_state(path: str | Path) -> dict[str, torch.Tensor] | None:
    """The text inputs' projection (:mod:`recbase.train.text_inputs`) of an export or a checkpoint folder, or None
    when the model was trained without text inputs."""
    from recbase.train.text_inputs import STATE_PREFIX

    return _module_state(path, TEXT_INPUTS_FILE, STATE_PREFIX)


def load_embedding_head(path: str | Path):
    """The model's :class:`~recbase.train.embedding_head.EmbeddingHead` in eval mode, or None without one."""
    from recbase.train.embedding_head import EmbeddingHead, state_kind

    state = load_head_state(path)
    if state is None:
        return None
    kind = state_kind(state)
    out, hidden = state["proj.weight"].shape
    dim = out if kind == "linear" else state["key.weight"].shape[1]
    head = EmbeddingHead(hidden, dim, kind, key_dim=out)
    head.load_state_dict(state)
    return head.eval()


def load_meta(path: str | Path) -> dict:
    """Only the ``recbase.json`` of an export or a checkpoint folder (no weights are read)."""
    path = Path(path)
    if is_hf_export(path):
        return read_export_meta(path)
    return ckpt.read_meta(_checkpoint_folder(path))


def _model_from(meta: dict, state: dict[str, torch.Tensor], attention: str):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config.from_dict(meta["model_config"])
    config._attn_implementation = attention
    model = Qwen2ForCausalLM(config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise UserError(f"checkpoint does not fit the model: missing {sorted(set(missing) - tied)[:3]}, "
                        f"unexpected {sorted(unexpected)[:3]}")
    model.tie_weights()
    return model.eval()


def load_model(path: str | Path, attention: str = "sdpa", tokenizer=None):
    """Load a trained model from a Hugging Face export or a DeepSpeed checkpoint folder.

    Returns ``(model, recbase_meta)``: a float32 ``Qwen2ForCausalLM`` in eval mode on the CPU, and the dict of
    ``recbase.json`` (``tokenizer_hash``, ``vocab`` (``Vocab.to_dict()``), ``step``, ``train_config``, ...).
    A model trained with text inputs gets them back (:func:`with_text_inputs`), from ``tokenizer`` (an artifact
    folder or a loaded one) or else the tokenizer folder its training config names.
    """
    path = Path(path)
    if is_hf_export(path):
        from transformers import AutoModelForCausalLM

        meta = read_export_meta(path)
        model = AutoModelForCausalLM.from_pretrained(str(path), attn_implementation=attention,
                                                     dtype=torch.float32, use_safetensors=True)
    else:
        state, meta = load_state(path)
        model = _model_from(meta, state, attention)
    return with_text_inputs(model.eval(), path, meta, tokenizer), meta


def with_text_inputs(model, path: Path, meta: dict, tokenizer=None):
    """``model`` with the text inputs it was trained with put back into its input embedding
    (:func:`recbase.train.text_inputs.install`); a model trained without them is returned as it is.

    The item vectors come from the tokenizer the model was trained with: ``tokenizer`` (a folder or a loaded
    artifact), or the folder its training config names; either must have the model's tokenizer hash.
    """
    recorded = meta.get("train_config", {}).get("model", {}).get("text_inputs")
    if not recorded:
        return model
    from recbase.tokenizer.artifact import Tokenizer, load_tokenizer
    from recbase.train.embedding_head import ItemVectors
    from recbase.train.text_inputs import TextInputs, install
    from recbase.vocab import Vocab

    if tokenizer is None and not Path(recorded).is_dir():
        raise UserError(f"{path} was trained with text inputs from the tokenizer at {recorded}, which is not "
                        f"there: pass the tokenizer artifact the model was trained with")
    if not isinstance(tokenizer, Tokenizer):
        tokenizer = load_tokenizer(tokenizer or recorded)
    if tokenizer.hash != meta.get("tokenizer_hash"):
        raise UserError(f"{path} was trained with tokenizer {meta.get('tokenizer_hash')}, its text inputs cannot come "
                        f"from tokenizer {tokenizer.hash}")
    state = load_text_inputs_state(path)
    if state is None:
        raise UserError(f"{path}: trained with text inputs (model.text_inputs) but holds no weights for them")
    vocab = Vocab.from_dict(meta["vocab"])
    vectors = ItemVectors(tokenizer, vocab)
    text = TextInputs(model.config.hidden_size, vectors.dim, vocab, vectors)
    text.load_state_dict(state)
    return install(model, text)


def is_export_of(out_dir: str | Path, checkpoints: str | Path) -> bool:
    """Whether the export in ``out_dir`` was written from a checkpoint of the folder ``checkpoints``: the folder
    its ``recbase.json`` names, or one holding the very checkpoint it was made from (the SHA-256 of its manifest,
    which hashes every file, as the export recorded it; the same ``recbase.json`` for exports that did not record
    it). The second holds wherever the pair now lies, so a run folder that was copied or moved, or a relative
    ``checkpoint.dir`` read from another working directory, is still the run's."""
    try:
        meta = json.loads((Path(out_dir) / META_FILE).read_text(encoding="utf-8"))
        if Path(meta["train_config"]["checkpoint"]["dir"]).resolve() == Path(checkpoints).resolve():
            return True
        source = Path(checkpoints) / ckpt.checkpoint_tag(int(meta["step"]))
        meta.pop("weights_sha256", None)
        manifest = meta.pop(SOURCE_KEY, None)
        return ckpt.is_complete(source) and ckpt.read_meta(source) == meta and \
            manifest in (None, sha256_file(source / ckpt.MANIFEST_FILE))
    except (OSError, ValueError, KeyError, TypeError):
        return False


def check_replaceable(out_dir: str | Path, overwrite: bool = False, own_checkpoints: str | Path | None = None) -> None:
    """Refuse to replace ``out_dir`` when it holds anything, unless ``overwrite``, or it is the export of the run
    that trains in ``own_checkpoints`` (a resumed run exports again; :func:`is_export_of`): evaluations,
    fine-tunings and served models may read the model there."""
    out = Path(out_dir)
    if not out.exists() or (out.is_dir() and not any(out.iterdir())) or overwrite:
        return
    if own_checkpoints is not None and is_export_of(out, own_checkpoints):
        return
    what = "a model" if (out / META_FILE).exists() else "other files"
    fix = ("set checkpoint.export_dir to another folder (or 'none'), or remove this one" if own_checkpoints is not None
           else "choose another output folder, or pass --overwrite to replace it")
    raise UserError(f"{out}: already holds {what}, which evaluations, fine-tunings or served models may read; {fix}")


def export_hf(checkpoint: str | Path, out_dir: str | Path, overwrite: bool = False) -> Path:
    """Write a consolidated Hugging Face folder for ``checkpoint``; an existing ``out_dir`` is replaced only with
    ``overwrite`` (see :func:`check_replaceable`), and only once the new export is complete."""
    check_replaceable(out_dir, overwrite)
    state, meta = load_state(checkpoint)
    model = _model_from(meta, state, "sdpa")
    out = Path(out_dir)
    tmp = out.parent / f".{out.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    head = load_head_state(checkpoint)
    if head is not None:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in head.items()}, str(tmp / HEAD_FILE))
    if meta.get("train_config", {}).get("model", {}).get("text_inputs"):
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in load_text_inputs_state(checkpoint).items()},
                  str(tmp / TEXT_INPUTS_FILE))
    weights = {p.name: sha256_file(p) for p in sorted(tmp.glob("*.safetensors"))}
    if not is_hf_export(Path(checkpoint)):
        meta[SOURCE_KEY] = sha256_file(_checkpoint_folder(Path(checkpoint)) / ckpt.MANIFEST_FILE)
    atomic_write_text(tmp / META_FILE, json.dumps({**meta, "weights_sha256": weights}, indent=2) + "\n")
    old = out.parent / f".{out.name}.old"
    if out.exists():
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)
    return out
