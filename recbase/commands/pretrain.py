"""``recbase pretrain``: the DeepSpeed pretraining run (also ``deepspeed launch/pretrain.py``)."""
from __future__ import annotations

import argparse

HELP = "pretrain the Qwen2 decoder on shards with DeepSpeed (ZeRO-3 by default); --dry-run prints sizes only"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="tiny.json",
                        help="training config JSON (a bare name is also looked up in launch/configs/)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. optim.lr=1e-4")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the world layout, vocabulary, parameters, FLOPs and memory; do not train")
    parser.add_argument("--verbose", action="store_true", help="--dry-run: also print the resolved config")
    parser.add_argument("--world-size", type=int, default=None, help="--dry-run: plan for this many ranks")
    # the deepspeed launcher appends --local_rank=N; LOCAL_RANK in the environment is what is used
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    from recbase.train.config import load_train_config

    cfg = load_train_config(args.config, args.overrides)
    if args.dry_run:
        from recbase.train.plan import describe

        print(describe(cfg, args.world_size, verbose=args.verbose))
        return 0
    from recbase.train.loop import pretrain

    result = pretrain(cfg)
    if result.export is not None:
        print(f"step {result.step}: checkpoint {result.checkpoint}, Hugging Face export {result.export}")
    from recbase.train.engine import exit_launched_process

    exit_launched_process(0)
    return 0
