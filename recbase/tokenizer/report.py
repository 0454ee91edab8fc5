"""``recbase tokenizer report``: how well a tokenizer spreads items over its codes, per level and per domain.

Per level: codes used, perplexity (exp of the usage entropy; K when usage is uniform) and the share of items in
the largest bucket. Per catalog: collision rate, reconstruction (squared error and cosine, in the normalised
space the quantiser sees), and how often an item's nearest neighbour shares its first l codes. Domains the
tokenizer was trained on and unseen domains are summarised separately, since the unseen ones are what zero-shot
recommendation depends on.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from recbase.io import atomic_path, atomic_write_text
from recbase.tokenizer.artifact import Tokenizer
from recbase.tokenizer.collisions import collision_rate, tuple_ids
from recbase.tokenizer.embed import unit_rows

GROUPS = ("trained", "unseen")
NEIGHBOUR_SAMPLE = 20_000   # items whose nearest neighbour is looked up (every item of a smaller catalog)
NEIGHBOUR_BLOCK = 1 << 24   # similarities held at once (64 MB of float32), whatever the catalog's size


def level_usage(codes: np.ndarray, codebook_size: int) -> list[dict]:
    """Per level: used codes, perplexity and largest bucket share of codes [N, L]."""
    out = []
    for level in range(codes.shape[1]):
        counts = np.bincount(codes[:, level], minlength=codebook_size)
        p = counts[counts > 0] / max(len(codes), 1)
        out.append({"used": int((counts > 0).sum()), "perplexity": float(np.exp(-(p * np.log(p)).sum())),
                    "largest_share": float(p.max()) if len(p) else 0.0})
    return out


def neighbour_prefix_share(x: np.ndarray, codes: np.ndarray, sample: int = NEIGHBOUR_SAMPLE,
                           seed: int = 0, block: int | None = None) -> list[float]:
    """Per l = 1..L: the share of items whose nearest other item by cosine (rows of ``x``) has the same first l codes.

    Usage and collisions say how evenly a tokenizer spreads items, not whether it keeps similar items together;
    a generative model predicts an item's codes level by level, and only a prefix shared by similar items gives
    it something to generalise from. Catalogs above ``sample`` items are measured on a seeded sample of queries
    (each against the whole catalog), so the cost stays at ``sample`` x N dot products; ``block`` queries are
    compared at a time (default: as many as fit in ``NEIGHBOUR_BLOCK`` similarities).
    """
    n = len(x)
    if n < 2:
        return [0.0] * codes.shape[1]
    x = unit_rows(np.asarray(x, dtype=np.float32))
    queries = np.arange(n) if n <= sample else np.sort(np.random.default_rng(seed).choice(n, sample, replace=False))
    nearest = np.empty(len(queries), dtype=np.int64)
    block = block or max(1, NEIGHBOUR_BLOCK // n)
    for i in range(0, len(queries), block):
        q = queries[i:i + block]
        sims = x[q] @ x.T
        sims[np.arange(len(q)), q] = -np.inf
        nearest[i:i + block] = sims.argmax(1)
    same = codes[queries] == codes[nearest]
    return [float(same[:, :level].all(1).mean()) for level in range(1, codes.shape[1] + 1)]


def catalog_metrics(tok: Tokenizer, embeddings: np.ndarray, stats) -> tuple[dict, np.ndarray]:
    """Metrics of one domain's catalog, and its codes [N, L]."""
    x = tok.normalize(embeddings, stats)
    codes = tok.encode(embeddings, stats)
    recon = tok.reconstruct(codes)
    cosine = (x * recon).sum(1) / np.maximum(np.linalg.norm(x, axis=1) * np.linalg.norm(recon, axis=1), 1e-12)
    _, sizes = tuple_ids(codes)
    return {"items": len(codes), "levels": level_usage(codes, tok.codebook_size),
            "collision_rate": collision_rate(codes), "largest_tuple_bucket": int(sizes.max()) if len(sizes) else 0,
            "recon_mse": float(((x - recon) ** 2).sum(1).mean()), "recon_cosine": float(cosine.mean()),
            "neighbour_prefix_share": neighbour_prefix_share(x, codes)}, codes


def tokenizer_report(tok: Tokenizer, embeddings: dict[str, np.ndarray], normalize_new: bool = True) -> dict:
    """Report over ``{domain: embeddings}``; ``normalize_new=False`` encodes unseen domains with the mean of the
    training domains' statistics instead of their own (the comparison that shows what per-domain
    normalisation buys)."""
    domains, codes_by_group = {}, {g: [] for g in GROUPS}
    for domain, emb in embeddings.items():
        group = "trained" if domain in tok.domain_stats else "unseen"
        stats = tok.stats_for(domain, emb) if (normalize_new or group == "trained") else pooled_training_stats(tok)
        metrics, codes = catalog_metrics(tok, emb, stats)
        domains[domain] = {"group": group, **metrics}
        codes_by_group[group].append(codes)
    summary = {}
    for group in GROUPS:
        members = [m for m in domains.values() if m["group"] == group]
        if not members:
            continue
        n = sum(m["items"] for m in members)
        summary[group] = {
            "domains": [d for d, m in domains.items() if m["group"] == group],
            "items": n,
            "levels": level_usage(np.concatenate(codes_by_group[group]), tok.codebook_size),
            **{key: sum(m[key] * m["items"] for m in members) / n
               for key in ("collision_rate", "recon_mse", "recon_cosine")},
            # neighbours are looked up within each catalog, the set a model ranks from
            "neighbour_prefix_share": [sum(m["neighbour_prefix_share"][level] * m["items"] for m in members) / n
                                       for level in range(tok.levels)],
        }
    return {"tokenizer": {"hash": tok.hash, "kind": tok.kind, "levels": tok.levels,
                          "codebook_size": tok.codebook_size, "normalization": tok.normalization,
                          "embedder": tok.embedder, "train_domains": tok.train_domains},
            "summary": summary, "domains": domains,
            "_codes": {g: np.concatenate(c) for g, c in codes_by_group.items() if c}}


def pooled_training_stats(tok: Tokenizer):
    """The item-weighted mean of the training domains' statistics: one normalisation for every domain."""
    stats = [s for s in tok.domain_stats.values() if s is not None]
    if not stats:
        return None
    w = np.array([s.n_items for s in stats], dtype=np.float64)
    mean = (np.stack([s.mean for s in stats]) * w[:, None]).sum(0) / w.sum()
    whiten = None if stats[0].whiten is None else (np.stack([s.whiten for s in stats]) * w[:, None, None]).sum(0) / w.sum()
    return type(stats[0])(mean=mean.astype(np.float32),
                          whiten=None if whiten is None else whiten.astype(np.float32), n_items=int(w.sum()))


def markdown(report: dict) -> str:
    t = report["tokenizer"]
    lines = [f"# Tokenizer report: {t['kind']} {t['levels']} x {t['codebook_size']} ({t['hash'][:12]})", "",
             f"Embedder `{t['embedder']}`, normalisation `{t['normalization']}`, trained on "
             f"{', '.join(t['train_domains'])}.", "",
             "| group / domain | items | used codes per level | perplexity per level | largest bucket per level "
             "| collisions | recon MSE | recon cos | nearest neighbour shares the first 1..L codes |",
             "|---|---|---|---|---|---|---|---|---|"]
    rows = [(f"**{g}**", s) for g, s in report["summary"].items()] + list(report["domains"].items())
    for name, m in rows:
        lv = m["levels"]
        used = " / ".join(str(x["used"]) for x in lv)
        perplexity = " / ".join(f"{x['perplexity']:.0f}" for x in lv)
        largest = " / ".join(f"{100 * x['largest_share']:.1f}%" for x in lv)
        shares = " / ".join(f"{100 * x:.1f}%" for x in m["neighbour_prefix_share"])
        lines.append(f"| {name} | {m['items']:,} | {used} | {perplexity} | {largest} | "
                     f"{100 * m['collision_rate']:.1f}% | {m['recon_mse']:.4f} | {m['recon_cosine']:.3f} | {shares} |")
    return "\n".join(lines) + "\n"


def usage_plot(report: dict, codebook_size: int, path: Path) -> None:
    """One panel per level: items per code, codes sorted by usage, trained and unseen domains overlaid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    codes = report["_codes"]
    levels = next(iter(codes.values())).shape[1]
    fig, axes = plt.subplots(1, levels, figsize=(3.2 * levels, 2.8), sharey=True, squeeze=False)
    for level, ax in enumerate(axes[0]):
        for group, c in codes.items():
            counts = np.sort(np.bincount(c[:, level], minlength=codebook_size))[::-1]
            ax.plot(np.arange(codebook_size), np.maximum(counts, 0.5), label=f"{group} ({len(c):,} items)")
        ax.set_yscale("log")
        ax.set_title(f"level {level + 1}")
        ax.set_xlabel("code rank")
    axes[0][0].set_ylabel("items per code (unused at 0.5)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def write_report(report: dict, out_dir: str | Path, codebook_size: int) -> list[Path]:
    """``report.json``, ``report.md`` and ``usage.png`` in ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "report.json", out / "report.md", out / "usage.png"]
    public = {k: v for k, v in report.items() if not k.startswith("_")}
    atomic_write_text(paths[0], json.dumps(public, indent=2) + "\n")
    atomic_write_text(paths[1], markdown(report))
    usage_plot(report, codebook_size, paths[2])
    return paths
