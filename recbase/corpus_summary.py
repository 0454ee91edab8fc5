"""The closing summary of a pipeline run, per domain: what the corpus holds and how well its items tokenize.

Per domain: users, items and interactions of its tables; the tokens its users contribute to the training shards
(pretraining domains) or the size of its eval set (held-out domains); how many level-1 codes its catalog uses and
their perplexity (a catalog squeezed into a few first-level codes gives the model little to tell items apart);
and its collision rate (items whose full code tuple an earlier item of the same catalog already holds). Written as
``summary.json``, ``summary.md`` and ``summary.png``, beside the wall time of every stage.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from recbase.data.codes import read_codes
from recbase.data.shard_format import read_manifest
from recbase.data.tables import count_users, read_items
from recbase.io import atomic_path, atomic_write_text
from recbase.tokenizer.collisions import collision_rate
from recbase.tokenizer.report import level_usage


def domain_summary(data_dir: Path, codes_path: Path, shard_dir: Path, pretrain: list[str],
                   heldout: list[str]) -> dict[str, dict]:
    """``{domain: counts}`` from the tables, the codes and the shard manifest of one run."""
    codes = read_codes(codes_path)
    manifest = read_manifest(shard_dir, codes.tokenizer_hash)
    k, levels = codes.vocab.codebook_size, codes.vocab.levels
    out = {}
    for name in pretrain + heldout:
        folder = Path(data_dir) / name
        users, interactions = count_users(folder)
        item_codes = codes.by_domain[name][1]
        first = level_usage(item_codes[:, :1], k)[0]
        row = {"role": "pretrain" if name in pretrain else "held-out",
               "users": users,
               "items": read_items(folder, ["item_id"]).num_rows,
               "interactions": interactions, "codebook_size": k,
               "level1_used": first["used"], "level1_perplexity": round(first["perplexity"], 1),
               "collision_rate": round(collision_rate(item_codes[:, :levels]), 5)}
        if name in pretrain:
            per_split = manifest["domains"].get(name, {})
            row["train_tokens"] = int(per_split.get("train", {}).get("tokens", 0))
            row["valid_tokens"] = int(per_split.get("valid", {}).get("tokens", 0))
        else:
            ev = manifest["eval_sets"].get(name, {})
            row["eval_users"], row["eval_pairs"] = int(ev.get("users", 0)), int(ev.get("pairs", 0))
        out[name] = row
    return out


def markdown(summary: dict[str, dict], stage_seconds: dict[str, float]) -> str:
    lines = ["| domain | role | users | items | interactions | train tokens | level-1 codes used | "
             "level-1 perplexity | collisions | eval users / pairs |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in summary.items():
        tokens = f"{r['train_tokens']:,}" if "train_tokens" in r else "—"
        evals = f"{r['eval_users']:,} / {r['eval_pairs']:,}" if "eval_users" in r else "—"
        lines.append(f"| {name} | {r['role']} | {r['users']:,} | {r['items']:,} | {r['interactions']:,} | {tokens} | "
                     f"{r['level1_used']} of {r['codebook_size']} | {r['level1_perplexity']:.1f} | "
                     f"{100 * r['collision_rate']:.2f}% | {evals} |")
    total = {key: sum(r.get(key, 0) for r in summary.values())
             for key in ("users", "items", "interactions", "train_tokens")}
    lines.append(f"| **all** | | {total['users']:,} | {total['items']:,} | {total['interactions']:,} | "
                 f"{total['train_tokens']:,} | | | | |")
    lines += ["", "| stage | seconds |", "|---|---|"]
    lines += [f"| {name} | {s:.1f} |" for name, s in stage_seconds.items()]
    return "\n".join(lines) + "\n"


def plot(summary: dict[str, dict], path: Path) -> None:
    """One panel per quantity, one bar per domain (held-out domains hatched)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary)
    panels = [("users", "users", 1), ("items", "items", 1), ("interactions", "interactions", 1),
              ("train_tokens", "train tokens", 1), ("level1_used", "level-1 codes used", 1),
              ("collision_rate", "collisions (%)", 100)]
    fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 0.35 * len(names) + 1.4), sharey=True)
    y = np.arange(len(names))
    for ax, (key, title, scale) in zip(axes, panels):
        values = [scale * summary[n].get(key, 0) for n in names]
        bars = ax.barh(y, values, color=["C0" if summary[n]["role"] == "pretrain" else "C1" for n in names])
        for bar, n in zip(bars, names):
            if summary[n]["role"] != "pretrain":
                bar.set_hatch("//")
        ax.set_title(title, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.locator_params(axis="x", nbins=3)
    axes[0].set_yticks(y, names)
    axes[0].invert_yaxis()
    fig.suptitle("per domain: pretraining (blue) and held-out (orange, hatched)", fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def write_summary(summary: dict[str, dict], stage_seconds: dict[str, float], out_dir: Path) -> list[Path]:
    """``summary.json``, ``summary.md`` and ``summary.png`` in ``out_dir``; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "summary.json", out_dir / "summary.md", out_dir / "summary.png"]
    atomic_write_text(paths[0], json.dumps({"domains": summary, "stage_seconds": stage_seconds}, indent=2) + "\n")
    atomic_write_text(paths[1], markdown(summary, stage_seconds))
    plot(summary, paths[2])
    return paths
