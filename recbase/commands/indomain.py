"""``recbase indomain``: TIGER's in-domain table on a P5-format split (see :mod:`recbase.indomain`)."""
from __future__ import annotations

HELP = "in-domain leave-one-out benchmark on a P5-format folder (TIGER's Beauty table): data → … → Recall/NDCG"


def add_arguments(parser) -> None:
    parser.add_argument("--config", help="benchmark config JSON (InDomainConfig fields; bare names also looked up "
                                         "in launch/configs, e.g. indomain_beauty.json); optional")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="overrides, e.g. source=../shared/data/amazon-beauty-p5 out=runs/beauty seeds=[0,1]")


def run(args) -> int:
    from recbase.config import load_config
    from recbase.indomain import InDomainConfig, run_indomain
    from recbase.train.config import CONFIG_DIR

    run_indomain(load_config(InDomainConfig, args.config, list(args.overrides), [CONFIG_DIR]))
    return 0
