"""``recbase finetune``: continue from a trained model on one domain's shards (also ``launch/finetune.py``)."""
from __future__ import annotations

import argparse

HELP = "fine-tune a pretrained model (HF export or checkpoint folder) on one domain's shards"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--init", required=True, help="Hugging Face export or DeepSpeed checkpoint folder to start from")
    parser.add_argument("--config", default="finetune.json",
                        help="training config JSON (a bare name is also looked up in launch/configs/)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides, e.g. data.shards=shards/scientific optim.max_steps=200")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    from recbase.train.config import load_finetune_config
    from recbase.train.loop import pretrain

    result = pretrain(load_finetune_config(args.config, args.init, args.overrides))
    if result.export is not None:
        print(f"step {result.step}: checkpoint {result.checkpoint}, Hugging Face export {result.export}")
    from recbase.train.engine import exit_launched_process

    exit_launched_process(0)
    return 0
