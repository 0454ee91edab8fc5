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

from recbase.errors import UserError
from recbase.eval.calibrate import fuse, slate_posterior
from recbase.eval.metrics import auc, gauc
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


def _cell(values: list[float], signed: bool = True, digits: int = 3) -> str:
    """Mean ± half the range over seeds; the mean alone when there is one seed."""
    mean = float(np.mean(values))
    text = f"{mean:+.{digits}f}" if signed else f"{mean:.{digits}f}"
    return f"{text} ± {(max(values) - min(values)) / 2:.{digits}f}" if len(values) > 1 else text


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


def pair_columns(run_dir: str | Path, model: str, domain: str, scores: list[str]) -> dict:
    """From a run's ``eval/pairs/<domain>.parquet``: the labels, the bar's scores, the model's head and each of
    ``scores`` (``pmi`` from the per-level columns, any other score from its own column), all split per user
    (the bar also whole, as ``bar``, and split, as ``text``)."""
    from recbase.data.tables import read_table

    path = Path(run_dir) / "eval" / "pairs" / f"{domain}.parquet"
    if not path.is_file():
        raise UserError(f"{path}: not found; run `recbase evaluate` with pair_scores=true")
    table = read_table(path)
    columns = set(table.column_names)
    users = table["user_id"].to_numpy(zero_copy_only=False)
    cuts = np.flatnonzero(users[1:] != users[:-1]) + 1
    col = lambda name: table[name].to_numpy().astype(np.float64)  # noqa: E731
    out = {"label": col("label"), "bar": col(BAR), "text": np.split(col(BAR), cuts),
           "head": np.split(col(f"{model}/head"), cuts)}
    for score in scores:
        if score == "pmi":
            levels = sum(1 for c in columns if c.startswith(f"{model}/logp_"))
            values = sum(col(f"{model}/logp_{lvl}") - col(f"{model}/prior_{lvl}") for lvl in range(levels))
        elif f"{model}/{score}" in columns:
            values = col(f"{model}/{score}")
        else:
            raise UserError(f"{path}: no column {model}/{score} (run `recbase evaluate` with codes= for the "
                            f"catalog scores)")
        out[score] = np.split(values, cuts)
    return out


def fusion_sweep(run_dirs: list[str | Path], model: str, scores: list[str], weights: list[float]) -> str:
    """Markdown: each score fused with the embedding head (per user, standardised head + weight × standardised
    score, as *PMI + head*) at the weight that scores best Overall on the OTHER folds (mean over their seeds), per
    held-out domain and Overall as fused − bar, mean ± half the range over seeds; the last column lists every
    weight's Overall on the fold itself."""
    runs = []
    for run_dir in run_dirs:
        meta = load_run(run_dir, model)
        per_domain = {d: pair_columns(run_dir, model, d, scores) for d in meta["domains"]}
        gaps = {(score, w): [auc(np.concatenate(fuse(p["head"], p[score], w)), p["label"]) - auc(p["bar"], p["label"])
                             for p in per_domain.values()] for score in scores for w in weights}
        runs.append({"fold": meta["fold"], "seed": meta["seed"], "gaps": gaps})
    folds = list(dict.fromkeys(r["fold"] for r in runs))
    header = ["score + head", "fold", "weight (other folds)"] + ["domains − bar", "Overall − bar",
                                                                 "Overall − bar at " + " / ".join(map(str, weights))]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for score in scores:
        def overall(run, w):
            return float(np.mean(run["gaps"][score, w]))
        for f, fold in enumerate(folds):
            best = _chosen_on_other_folds(runs, fold, weights, overall)
            mine = [r for r in runs if r["fold"] == fold]
            domains = ", ".join(f"{d} {_cell([r['gaps'][score, best][i] for r in mine])}" for i, d in enumerate(fold))
            sweep = " / ".join(f"{np.mean([overall(r, w) for r in mine]):+.4f}" for w in weights)
            lines.append(f"| {VARIANTS.get(score, score)} | {chr(ord('A') + f)} | {best} | {domains} | "
                         f"{_cell([overall(r, best) for r in mine], digits=4)} | {sweep} |")
    return "\n".join(lines)


def _chosen_on_other_folds(runs: list[dict], fold: tuple, options: list, overall) -> object:
    """The option whose ``overall(run, option)`` is best on the folds other than ``fold``, mean over each fold's
    runs and then over the folds (on ``fold`` itself when it is the only one): a setting is never chosen on the
    domains it is reported on."""
    folds = list(dict.fromkeys(r["fold"] for r in runs))
    others = [o for o in folds if o != fold] or [fold]
    return max(options, key=lambda o: np.mean([np.mean([overall(r, o) for r in runs if r["fold"] == f])
                                               for f in others]))


CALIBRATED = {"bar": "text sim (centred), the bar", "head": "embedding head", "head_fused": "PMI + head"}


def calibration_table(run_dirs: list[str | Path], model: str, betas: list[float]) -> str:
    """Markdown: the bar, the head and *PMI + head* each turned into the per-user slate posterior
    (:func:`~recbase.eval.calibrate.slate_posterior`) at the ``beta`` the OTHER folds choose, as pooled AUC minus
    the bar's plain AUC per held-out domain and Overall, and Overall minus the bar calibrated the same way.

    Why: a score that beats the bar only after calibration may owe the gain to the calibration, which the bar gets
    for free. The last column, GAUC − the bar's GAUC, is the part no calibration can change: the order within
    users. *PMI + head* is fused at the run's own ``fusion_weight`` (its ``metrics.json``)."""
    runs = []
    for run_dir in run_dirs:
        meta = load_run(run_dir, model)
        weight = read_metrics(Path(run_dir) / "eval").get("config", {}).get("fusion_weight", 0.1)
        gaps, gauc_gaps = {}, {}
        for domain in meta["domains"]:
            p = pair_columns(run_dir, model, domain, ["pmi"])
            users = np.repeat(np.arange(len(p["text"])), [len(t) for t in p["text"]])
            per_user = {"bar": p["text"], "head": p["head"], "head_fused": fuse(p["head"], p["pmi"], weight)}
            bar = auc(p["bar"], p["label"])
            for score, values in per_user.items():
                for b in betas:
                    calibrated = np.concatenate([slate_posterior(v, b) for v in values])
                    gaps.setdefault((score, b), []).append(auc(calibrated, p["label"]) - bar)
                gauc_gaps.setdefault(score, []).append(gauc(users, np.concatenate(values), p["label"])
                                                       - gauc(users, p["bar"], p["label"]))
        runs.append({"fold": meta["fold"], "seed": meta["seed"], "gaps": gaps, "gauc": gauc_gaps})
    folds = list(dict.fromkeys(r["fold"] for r in runs))
    header = ["score, slate posterior", "fold", "β (other folds)", "domains − bar", "Overall − bar",
              "Overall − calibrated bar", "GAUC − bar GAUC, Overall"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    def overall(run, score, b):
        return float(np.mean(run["gaps"][score, b]))
    for score, label in CALIBRATED.items():
        for f, fold in enumerate(folds):
            best = _chosen_on_other_folds(runs, fold, betas, lambda run, b: overall(run, score, b))
            bar_beta = _chosen_on_other_folds(runs, fold, betas, lambda run, b: overall(run, "bar", b))
            mine = [r for r in runs if r["fold"] == fold]
            domains = ", ".join(f"{d} {_cell([r['gaps'][score, best][i] for r in mine])}" for i, d in enumerate(fold))
            over_calibrated = [overall(r, score, best) - overall(r, "bar", bar_beta) for r in mine]
            lines.append(f"| {label} | {chr(ord('A') + f)} | {best} | {domains} | "
                         f"{_cell([overall(r, score, best) for r in mine], digits=4)} | "
                         f"{_cell(over_calibrated, digits=4)} | "
                         f"{_cell([float(np.mean(r['gauc'][score])) for r in mine], digits=4)} |")
    return "\n".join(lines)
