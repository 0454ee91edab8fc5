"""``recbase export``: a consolidated Hugging Face folder from a DeepSpeed checkpoint (any ZeRO stage)."""
from __future__ import annotations

import argparse

HELP = "export a DeepSpeed checkpoint (ZeRO shards consolidated) to a Hugging Face save_pretrained folder"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="checkpoint folder global_step<N>/, or a checkpoints folder with 'latest'")
    parser.add_argument("out", help="output folder (written under a temporary name, renamed once complete)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a model (or anything else) already in OUT; without it, such an OUT is refused")


def run(args: argparse.Namespace) -> int:
    from recbase.train.export import export_hf

    print(f"exported {export_hf(args.checkpoint, args.out, overwrite=args.overwrite)}")
    return 0
