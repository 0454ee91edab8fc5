"""``recbase demo``: the whole pipeline on the built-in demo world (see :mod:`recbase.demo`)."""
from __future__ import annotations

HELP = "run the whole pipeline on the built-in demo world (CPU, minutes): world → … → zero-shot AUC table"


def add_arguments(parser) -> None:
    parser.add_argument("--config", help="demo config JSON (DemoConfig fields; bare names also looked up in "
                                         "launch/configs, e.g. demo_real.json); optional")
    parser.add_argument("--out", help="output folder (default demo_out)")
    parser.add_argument("--fresh", action="store_true", help="delete the output folder first instead of resuming")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="DemoConfig overrides, e.g. train_steps=50")


def run(args) -> int:
    from recbase.config import load_config
    from recbase.demo import DemoConfig, run_demo
    from recbase.train.config import CONFIG_DIR

    overrides = list(args.overrides) + ([f"out={args.out}"] if args.out else [])
    run_demo(load_config(DemoConfig, args.config, overrides, [CONFIG_DIR]), fresh=args.fresh)
    return 0
