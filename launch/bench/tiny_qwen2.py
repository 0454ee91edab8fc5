"""The random Qwen2 the scoring and retrieval benchmarks share: its command-line options and its construction.

Throughput of a tiny model on CPU measures the scorer's layout (how many tokens go through the model), not the
model; the same options on a GPU with a larger ``--hidden``/``--layers`` measure real kernels.
"""
from __future__ import annotations

import argparse
import datetime
import platform
import sys

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from recbase.vocab import Vocab


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--levels", type=int, default=4)
    p.add_argument("--codebook-size", type=int, default=256)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads on CPU")


def build(args: argparse.Namespace) -> tuple[Vocab, Qwen2ForCausalLM]:
    """Seeded random model in eval mode on ``args.device``; also sets the thread count."""
    torch.set_num_threads(args.threads)
    vocab = Vocab(levels=args.levels, codebook_size=args.codebook_size)
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=vocab.model_vocab_size, hidden_size=args.hidden, intermediate_size=4 * args.hidden,
                      num_hidden_layers=args.layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=4096, attn_implementation="sdpa")
    return vocab, Qwen2ForCausalLM(cfg).eval().to(args.device, getattr(torch, args.dtype))


def print_header(args: argparse.Namespace, model: Qwen2ForCausalLM, setup: str) -> None:
    """The lines every benchmark report starts with: when, where, the exact command, the model and ``setup``."""
    n_params = sum(p.numel() for p in model.parameters())
    on_cuda = args.device.startswith("cuda")
    device_name = torch.cuda.get_device_name() if on_cuda else platform.processor() or "cpu"
    print(f"date {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}; device {args.device} "
          f"({device_name}); torch {torch.__version__}; threads {torch.get_num_threads()}")
    print("command: python " + " ".join(sys.argv))
    print(f"model: Qwen2 hidden {args.hidden}, {args.layers} layers, {n_params / 1e6:.2f}M params, {args.dtype}; "
          + setup)
