"""Writing an evaluation's results: ``metrics.json`` (every number and the config), ``report.md`` (Markdown tables,
the paper's Table 1 and Table 3 layouts) and one bar chart PNG per metric.

``results`` is the dict :func:`recbase.eval.job.evaluate` builds: ``domains[d]["models"|"baselines"][name][metric]``
and ``overall["models"|"baselines"][name][metric]`` (unweighted mean over domains).
"""
from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recbase.errors import UserError
from recbase.eval.baselines import LABELS
from recbase.eval.metrics import retrieval_metrics
from recbase.io import atomic_path, atomic_write_bytes, atomic_write_text

METRICS_FILE = "metrics.json"
RANKING_METRICS = ("auc", "gauc", "auc_len_norm")
RETRIEVAL_CHART_METRICS = ("recall@10", "ndcg@10", "mrr")
BAR = "text_centred"
CATALOG_VARIANTS = {"trie": "trie", "trie_decay": "trie, levels 1/2^l", "trie_pmi": "trie PMI",
                    "cpmi": "catalog PMI", "cpmi_trie": "catalog PMI, trie",
                    "cpmi_trie_first": "catalog PMI, trie, level 1",
                    "cpmi_trie_decay": "catalog PMI, trie, levels 1/2^l"}   # recbase.eval.calibrate.CATALOG_SCORES
VARIANTS = {"len_norm": "len-norm", "prefix": "prefix", "pmi": "PMI", "pmi_prefix": "PMI prefix",
            "fused": "PMI + text", "head": "embedding head", "head_fused": "PMI + head", **CATALOG_VARIANTS,
            **{f"{k}_head": f"{v} + head" for k, v in CATALOG_VARIANTS.items()}}
# ^ other scores of a model, as metrics keys auc_<name> (recbase/eval/job.py)
# the score the dev suite adopted (docs/evaluation.md), shown against the bar beside log P: the first of these a
# model has (PMI + head needs a model trained with the embedding head)
ADOPTED = ("head_fused", "fused")
TERMINAL_VARIANTS = ("fused", "head", "head_fused")   # scores the terminal table shows under log P, when present


def adopted_variant(variants) -> str | None:
    """The adopted score among a model's ``variants`` (None when it has none of them)."""
    return next((v for v in ADOPTED if v in variants), None)


def _fmt(x) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.4f}"


def _rows(results: dict):
    """(label, section) for every domain, then Overall."""
    for d, section in results["domains"].items():
        yield d, section
    yield "**Overall**", results["overall"]


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def ranking_table(results: dict) -> str:
    models = list(results["overall"]["models"])
    baselines = [b for b in results["overall"]["baselines"]]
    bar_first = sorted(baselines, key=lambda b: b != BAR)
    has_bar = BAR in baselines
    header = ["domain"]
    variants = {m: [v for v in VARIANTS if f"auc_{v}" in results["overall"]["models"][m]] for m in models}
    for m in models:
        header += [f"{m} AUC", f"{m} GAUC"] + [f"{m} AUC ({VARIANTS[v]})" for v in variants[m]]
        header += [f"{m} − bar"] if has_bar else []
        adopted = adopted_variant(variants[m])
        header += [f"{m} {VARIANTS[adopted]} − bar"] if has_bar and adopted else []
    header += [f"{LABELS[b]} AUC" for b in bar_first]
    rows = []
    for label, section in _rows(results):
        row = [label]
        for m in models:
            r = section["models"][m]
            row += [_fmt(r["auc"]), _fmt(r["gauc"])] + [_fmt(r[f"auc_{v}"]) for v in variants[m]]
            if has_bar:
                adopted = adopted_variant(variants[m])
                for key in ["auc"] + ([f"auc_{adopted}"] if adopted else []):
                    gap = r[key] - section["baselines"][BAR]["auc"]
                    row.append("–" if math.isnan(gap) else f"{gap:+.4f}")
        row += [_fmt(section["baselines"][b]["auc"]) for b in bar_first]
        rows.append(row)
    return _table(header, rows)


def compact_table(results: dict) -> str:
    """The terminal's table: per domain and Overall, each model's AUC beside the bar's and the difference.

    One row per (domain, model, score): log P, then the adopted score and the embedding head's where the model
    has them, so it stays narrow however many models there are; report.md has the rest.
    """
    bar = BAR in results["overall"]["baselines"]
    header = ["domain", "model", "AUC"] + (["bar", "model − bar"] if bar else [])
    rows = []
    for label, section in _rows(results):
        for m, r in section["models"].items():
            shown = [("auc", m)] + [(f"auc_{v}", f"{m}: {VARIANTS[v]}") for v in TERMINAL_VARIANTS
                                    if r.get(f"auc_{v}") is not None]
            for key, name in shown:
                row = [label.strip("*"), name, _fmt(r[key])]
                if bar:
                    b = section["baselines"][BAR]["auc"]
                    gap = r[key] - b
                    row += [_fmt(b), "–" if math.isnan(gap) else f"{gap:+.4f}"]
                rows.append(row)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))).rstrip()
             for line in [header] + rows]
    note = (f"bar = {LABELS[BAR]} AUC, the zero-shot bar to clear; chance = 0.5" if bar
            else "no text-similarity bar in this run (add text_centred to the baselines); chance = 0.5")
    return "\n".join(lines + [note])


def baseline_gauc_table(results: dict) -> str:
    baselines = list(results["overall"]["baselines"])
    rows = [[label] + [_fmt(section["baselines"][b]["gauc"]) for b in baselines] for label, section in _rows(results)]
    return _table(["domain"] + [f"{LABELS[b]} GAUC" for b in baselines], rows)


def comparison_table(results: dict) -> str:
    """Table 3 layout: the first model against each other model, with the relative change of AUC."""
    models = list(results["overall"]["models"])
    base = models[0]
    header = ["domain", f"{base} AUC"]
    for m in models[1:]:
        header += [f"{m} AUC", f"Δ vs {base}"]
    rows = []
    for label, section in _rows(results):
        a = section["models"][base]["auc"]
        row = [label, _fmt(a)]
        for m in models[1:]:
            b = section["models"][m]["auc"]
            rel = (b - a) / a * 100 if a and not (math.isnan(a) or math.isnan(b)) else float("nan")
            row += [_fmt(b), "–" if math.isnan(rel) else f"{rel:+.2f}%"]
        rows.append(row)
    return _table(header, rows)


def retrieval_table(results: dict, ks: list[int]) -> str:
    metrics = [f"recall@{k}" for k in ks] + [f"ndcg@{k}" for k in ks] + ["mrr"]
    rows = []
    for label, section in _rows(results):
        for m, r in section["models"].items():
            if "retrieval" in r:
                rows.append([label, m] + [_fmt(r["retrieval"][x]) for x in metrics])
    return _table(["domain", "model"] + metrics, rows)


def timing_table(results: dict) -> str:
    rows = []
    for d, section in results["domains"].items():
        for m, r in section["models"].items():
            t = r["timing"]
            retrieval = f"{r['retrieval']['seconds']:.2f}" if "retrieval" in r else "–"
            rows.append([d, m, f"{t['pairs']:,}", f"{t['pairs_per_s']:.1f}", f"{t['seconds']:.2f}",
                         f"{t['total_seconds']:.2f}", retrieval])
    return _table(["domain", "model", "pairs", "pairs/s", "model seconds", "total scoring seconds",
                   "retrieval seconds"], rows)


def render_markdown(results: dict) -> str:
    cfg = results["config"]
    catalog_pmi = (f"*catalog PMI* = log P − log of the mean P(candidate | h) over the histories h of a sample of "
                   f"{cfg['catalog_users']} eval users (the user's own left out); " if cfg.get("catalog_users") else "")
    parts = [
        "# Zero-shot evaluation",
        "",
        f"Models: {', '.join(f'`{m}` ({p})' for m, p in results['models'].items())}. "
        f"Scoring mode: {cfg['mode']}, device {results['device']}.",
        "",
        "## Ranking (AUC; GAUC = per-user AUC averaged over users, unweighted)",
        "",
        f"Score = log P(candidate's concept tokens | history); *len-norm* = mean log P per token; *prefix* = "
        f"log P of the first {results['config'].get('prefix_levels', 1)} level(s) only, the coarse concepts; "
        f"*PMI* = log P(candidate | history) − log P(candidate | no history); *PMI + text* = per user, the "
        f"standardised centred text similarity + {results['config'].get('fusion_weight', 0.1)} × the "
        f"standardised PMI. With the catalog's codes: *trie* = log P with each level renormalised over the codes the "
        f"catalog allows after the candidate's prefix; *trie PMI* = the same minus its value after `bos` alone; "
        f"{catalog_pmi}*level 1* / *levels 1/2^l* = the levels weighted 1, 0, 0, … / 1, 1/2, 1/4, …; "
        f"*X + head* = the embedding head fused with X as in *PMI + head*. "
        f"**{LABELS[BAR]}** is the zero-shot bar a model has to clear (*− bar*: model AUC minus its AUC). "
        f"Overall = unweighted mean over domains.",
        "",
        ranking_table(results),
        *[f"\n**{d} is not zero-shot**: {'; '.join(s['not_zero_shot_because'])}."
          for d, s in results["domains"].items() if s.get("not_zero_shot_because")],
        *[f"\n{d}: {', '.join(f'`{m}`' for m in s['fine_tuned_on_it'])} fine-tuned on this domain."
          for d, s in results["domains"].items() if s.get("fine_tuned_on_it")],
        "",
        "### Baselines, GAUC",
        "",
        baseline_gauc_table(results),
    ]
    if len(results["models"]) > 1:
        parts += ["", "## Model comparison (AUC)", "", comparison_table(results)]
    if any("retrieval" in r for s in results["domains"].values() for r in s["models"].values()):
        parts += ["", f"## Retrieval over the full catalog (leave-one-out, beam width {cfg['beam_width']})", "",
                  retrieval_table(results, cfg["ks"])]
    parts += ["", "## Scoring throughput", "", timing_table(results), ""]
    return "\n".join(parts)


def _series(results: dict, metric: str) -> dict[str, list[float]]:
    """Bars per scorer over (domains..., Overall) for ``metric``."""
    series: dict[str, list[float]] = {}
    sections = [s for _, s in _rows(results)]
    for m in results["overall"]["models"]:
        vals = []
        for s in sections:
            r = s["models"][m]
            vals.append(r.get("retrieval", {}).get(metric, float("nan")) if metric not in r else r[metric])
        series[m] = vals
    if metric in ("auc", "gauc"):
        for b in results["overall"]["baselines"]:
            series[LABELS[b]] = [s["baselines"][b][metric] for s in sections]
    return series


def chance_retrieval(n_items: int, ks: list[int]) -> dict[str, float]:
    """Recall@K, NDCG@K and MRR of a uniformly random ranking of ``n_items``: each metric averaged over every rank
    the target can take."""
    return retrieval_metrics(np.arange(1, n_items + 1, dtype=np.float64), ks)


def reference_lines(results: dict, metric: str) -> dict[str, list[float]]:
    """Lines a chart draws across each group (domains..., Overall): the bar to clear and chance."""
    sections = [s for _, s in _rows(results)]
    lines: dict[str, list[float]] = {}
    if metric in RANKING_METRICS:
        if BAR in results["overall"]["baselines"]:
            key = "gauc" if metric == "gauc" else "auc"
            lines[f"bar to clear: {LABELS[BAR]}"] = [s["baselines"][BAR][key] for s in sections]
        lines["chance"] = [0.5] * len(sections)
    elif metric in RETRIEVAL_CHART_METRICS:
        ks = results["config"]["ks"]
        per_domain = []
        for section in results["domains"].values():
            sizes = [r["retrieval"]["catalog_items"] for r in section["models"].values() if "retrieval" in r]
            per_domain.append(chance_retrieval(sizes[0], ks)[metric] if sizes else float("nan"))
        lines["chance (random ranking of the catalog)"] = per_domain + [float(np.nanmean(per_domain))]
    return lines


def bar_chart(results: dict, metric: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(results["domains"]) + ["Overall"]
    series = _series(results, metric)
    width = 0.8 / max(len(series), 1)
    fig, ax = plt.subplots(figsize=(max(8, 1.5 * len(labels) + 4), 4))
    x = np.arange(len(labels))
    for i, (name, vals) in enumerate(series.items()):
        ax.bar(x + (i - (len(series) - 1) / 2) * width, np.nan_to_num(vals), width, label=name)
    ax.set_xticks(x, labels)
    ax.set_ylabel(metric)
    for name, vals in reference_lines(results, metric).items():
        style = {"color": "grey", "lw": 1.0, "ls": "--"} if name.startswith("chance") else {"color": "black", "lw": 2}
        for i, v in enumerate(vals):   # across each group: the reference differs by domain
            ax.hlines(v, i - 0.45, i + 0.45, label=name if i == 0 else None, **style)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title(f"{metric} per domain")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def _nan_to_none(x):
    """JSON has no NaN: an undefined metric (e.g. AUC of a one-class domain) is written as null."""
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {k: _nan_to_none(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_nan_to_none(v) for v in x]
    return x


def write_pair_scores(columns: dict, path: Path) -> None:
    """One row per (user, candidate) pair: ids, label, and every scorer's score (a model's per-level
    log-probabilities after the history and after ``bos`` alone), so a new way to combine them can be measured
    without scoring again."""
    with atomic_path(path) as tmp:
        pq.write_table(pa.table({k: pa.array(list(v) if v.dtype == object else v) for k, v in columns.items()}), tmp)


def write_report(results: dict, out_dir: str | Path) -> list[Path]:
    """Write metrics.json, report.md and the charts atomically; returns the written paths."""
    out = Path(out_dir)
    written = [out / METRICS_FILE, out / "report.md"]
    atomic_write_text(written[0], json.dumps(_nan_to_none(results), indent=2, allow_nan=False) + "\n")
    atomic_write_text(written[1], render_markdown(results))
    metrics = list(RANKING_METRICS)
    if any("retrieval" in r for s in results["domains"].values() for r in s["models"].values()):
        metrics += RETRIEVAL_CHART_METRICS
    for metric in metrics:
        path = out / f"{metric.replace('@', '_at_')}.png"
        atomic_write_bytes(path, bar_chart(results, metric))
        written.append(path)
    return written


def read_metrics(out_dir: str | Path) -> dict:
    """The results an evaluation wrote into ``out_dir`` (its ``metrics.json``)."""
    path = Path(out_dir) / METRICS_FILE
    if not path.is_file():
        raise UserError(f"{path}: not found; run `recbase evaluate` with out_dir={out_dir} first")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: not readable as evaluation results ({e}); run the evaluation again") from None
