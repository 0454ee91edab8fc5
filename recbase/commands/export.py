"""``recbase export``: a consolidated Hugging Face folder from a DeepSpeed checkpoint (any ZeRO stage)."""
from __future__ import annotations

import argparse

HELP = "export a DeepSpeed checkpoint (ZeRO shards consolidated) to a Hugging Face save_pretrained folder"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="checkpoint folder global_step<N>/, or a checkpoints folder with 'latest'")
    parser.add_argument("out", help="output folder (replaced only once the export is complete)")


def run(args: argparse.Namespace) -> int:
    from recbase.train.export import export_hf

    print(f"exported {export_hf(args.checkpoint, args.out)}")
    return 0
