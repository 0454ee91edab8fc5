"""``recbase run --config CONFIG``: the pipeline runner (see :mod:`recbase.pipeline`)."""
from __future__ import annotations

HELP = "run the pipeline from one config: datasets → tables → embeddings → tokenizer → shards (→ model → eval)"


def add_arguments(parser) -> None:
    parser.add_argument("--config",
                        help="pipeline config JSON (PipelineConfig fields; bare names also looked up in "
                             "launch/configs, e.g. corpus_shared.json)")
    parser.add_argument("--out", help="output folder (overrides the config's out)")
    parser.add_argument("--fresh", action="store_true",
                        help="first delete what earlier runs wrote in the output folder (only the runner's own files)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. train_steps=50")


def run(args) -> int:
    from recbase.pipeline import load_pipeline_config, run_pipeline

    overrides = list(args.overrides) + ([f"out={args.out}"] if args.out else [])
    run_pipeline(load_pipeline_config(args.config, overrides), fresh=args.fresh)
    return 0
