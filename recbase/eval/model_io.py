"""Loading a model to evaluate and refusing one whose tokenizer does not match the data.

A model is a Hugging Face export folder (``save_pretrained`` of a ``Qwen2ForCausalLM`` plus ``recbase.json``
holding ``tokenizer_hash`` and ``vocab``), or a DeepSpeed checkpoint folder, which
``recbase.train.export.load_model`` consolidates. Concept ids mean nothing across tokenizers, so a model is only
scored on eval sets and catalogs made with the tokenizer it was trained on.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from recbase.errors import UserError
from recbase.train.export import META_FILE
from recbase.vocab import Vocab


class TokenizerMismatch(UserError):
    """A model and an eval input were made with different tokenizers."""


@dataclass
class EvalModel:
    name: str
    path: Path
    model: torch.nn.Module
    vocab: Vocab
    tokenizer_hash: str
    train_domains: list[str] | None = None             # domains the model was trained on (None: not recorded)
    tokenizer_train_domains: list[str] | None = None   # domains its tokenizer was trained on
    fine_tuned: bool = False                           # trained from other weights (checkpoint.init_from)
    embedding_head: torch.nn.Module | None = None      # next-item text-embedding head (None: trained without)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


DTYPES = ("auto", "float32", "bfloat16", "float16")


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto`` is bf16 on GPU and float32 on CPU (where bf16 matmuls are slow and imprecise)."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, dtype)


def load_eval_model(name: str, path: str | Path, device: str = "auto", dtype: str = "auto",
                    tokenizer=None) -> EvalModel:
    """Load the model at ``path`` for inference (eval mode, SDPA attention so 4D branch masks apply).

    ``tokenizer`` (an artifact folder or a loaded one) gives a model trained with text inputs its item vectors;
    without it they come from the tokenizer folder the model's training config names."""
    from recbase.train.export import load_embedding_head, load_model

    path = Path(path)
    if not path.is_dir():
        raise UserError(f"model {name!r}: {path} is not a folder")
    dev = resolve_device(device)
    model, meta = load_model(path, attention="sdpa", tokenizer=tokenizer)
    for key in ("tokenizer_hash", "vocab"):
        if key not in meta:
            raise UserError(f"model {name!r}: {path} has no {key!r} in its {META_FILE}")
    model = model.to(dev, resolve_dtype(dtype, dev)).eval()
    # only a model trained with the head has one (a checkpoint would otherwise be consolidated twice for nothing)
    trained_with_head = meta.get("train_config", {}).get("model", {}).get("embedding_head")
    head = load_embedding_head(path) if trained_with_head else None
    return EvalModel(name, path, model, Vocab.from_dict(meta["vocab"]), str(meta["tokenizer_hash"]),
                     meta.get("train_domains"), meta.get("tokenizer", {}).get("train_domains"),
                     bool(meta.get("train_config", {}).get("checkpoint", {}).get("init_from")),
                     head.to(dev) if head is not None else None)


def check_tokenizer_hash(model: EvalModel, expected: dict[str, str]) -> None:
    """Refuse ``model`` unless its tokenizer hash equals every ``expected`` hash (keyed by the file stating it)."""
    for source, digest in expected.items():
        if digest != model.tokenizer_hash:
            raise TokenizerMismatch(
                f"model {model.name!r} was trained with tokenizer {model.tokenizer_hash} "
                f"({model.path / META_FILE}) but {source} was made with tokenizer {digest}; "
                f"concept ids are not comparable across tokenizers")
