"""``recbase evaluate``: zero-shot AUC / GAUC, catalog retrieval and baselines on held-out domains."""
from __future__ import annotations

import argparse

HELP = "evaluate models zero-shot on held-out domains (AUC, GAUC, retrieval, baselines, report)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="JSON config (recbase.eval.job.EvalConfig); a bare name is looked up "
                                         "in launch/configs")
    parser.add_argument("--model", action="append", default=[], metavar="NAME=PATH",
                        help="a model to evaluate (repeatable, e.g. --model zero_shot=A --model finetuned=B)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")


def parse_models(specs: list[str]) -> dict[str, str]:
    models = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"--model {spec!r}: expected NAME=PATH")
        models[name] = path
    return models


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from recbase.config import load_config
    from recbase.eval.job import EvalConfig, evaluate
    from recbase.eval.report import METRICS_FILE, compact_table
    from recbase.presets import preset_dir

    cfg = load_config(EvalConfig, args.config, args.overrides, search_dirs=[preset_dir()])
    cfg.models.update(parse_models(args.model))
    results = evaluate(cfg)
    print()
    print(compact_table(results))
    print(f"\nwrote {Path(cfg.out_dir) / METRICS_FILE}, report.md (every metric and baseline) and charts")
    return 0
