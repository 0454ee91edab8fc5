"""The zero-shot dev suite's summary: model − bar per held-out domain and Overall, over folds and seeds.

A fold is a pipeline run (``recbase demo --config zeroshot_fold_a.json``) that pretrains on some domains and
evaluates zero-shot on the others; the same fold run with two seeds shows how much of a difference is noise.
Each run folder holds ``pipeline_config.json`` (its seed and held-out domains) and ``eval/metrics.json``. Every
score a model reports (``auc``, ``auc_pmi``, ...) appears as its AUC minus the centred text similarity's AUC on the same
pairs, as the mean over seeds ± half the range between them (the mean alone for one seed); the Overall of all
folds uses the seeds that every fold ran.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from recbase.eval.report import BAR, METRICS_FILE, VARIANTS, read_metrics
from recbase.pipeline import CONFIG_FILE, load_pipeline_config

SCORES = {"auc": "log P", **{f"auc_{v}": label for v, label in VARIANTS.items() if v != "len_norm"}}


def load_run(run_dir: str | Path, model: str) -> dict:
    """Seed, held-out domains and, per domain, the bar's AUC and every score's AUC of ``model``."""
    run_dir = Path(run_dir)
    config = load_pipeline_config(str(run_dir / CONFIG_FILE), [])
    metrics = read_metrics(run_dir / "eval")
    domains = {}
    for domain in config.heldout_domains:
        section = metrics["domains"][domain]
        if model not in section["models"]:
            raise KeyError(f"{run_dir / 'eval' / METRICS_FILE}: no model {model!r} "
                           f"(have {', '.join(section['models'])})")
        result = section["models"][model]
        domains[domain] = {"bar": section["baselines"][BAR]["auc"],
                           **{k: result[k] for k in SCORES if result.get(k) is not None}}
    return {"seed": config.seed, "fold": tuple(config.heldout_domains), "domains": domains}


def _cell(values: list[float], signed: bool = True) -> str:
    """Mean ± half the range over seeds; the mean alone when there is one seed."""
    mean = float(np.mean(values))
    text = f"{mean:+.3f}" if signed else f"{mean:.3f}"
    return f"{text} ± {(max(values) - min(values)) / 2:.3f}" if len(values) > 1 else text


def summary_table(runs: list[dict]) -> str:
    """Markdown: one row per held-out domain, then Overall per fold and over every held-out domain."""
    folds: dict[tuple, dict[int, dict]] = {}
    for run in runs:
        folds.setdefault(run["fold"], {})[run["seed"]] = run["domains"]
    seeds = sorted({run["seed"] for run in runs})
    scores = [k for k in SCORES if all(k in d for run in runs for d in run["domains"].values())]
    header = ["fold", "domain", "bar AUC"] + [f"{SCORES[k]} − bar" for k in scores]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    def row(fold: str, domain: str, per_seed: list[list[dict]]) -> None:
        # per_seed[i]: the domains averaged for seed i (one domain, a fold's or every fold's)
        cells = [_cell([np.mean([d["bar"] for d in ds]) for ds in per_seed], signed=False)]
        cells += [_cell([np.mean([d[k] - d["bar"] for d in ds]) for ds in per_seed]) for k in scores]
        lines.append("| " + " | ".join([fold, domain] + cells) + " |")

    for f, (fold, by_seed) in enumerate(folds.items()):
        name = chr(ord("A") + f)
        for domain in fold:
            row(name, domain, [[by_seed[s][domain]] for s in sorted(by_seed)])
        row(name, "**Overall**", [list(by_seed[s].values()) for s in sorted(by_seed)])
    complete = [s for s in seeds if all(s in by_seed for by_seed in folds.values())]  # seeds every fold ran
    if len(folds) > 1 and complete:
        row("all", "**Overall**", [[d for by_seed in folds.values() for d in by_seed[s].values()] for s in complete])
    return "\n".join(lines)
