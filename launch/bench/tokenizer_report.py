"""Tokenizer comparison on the real datasets: CL-VAE, its ablations, RQ-Kmeans and FSQ; then held-out encoding.

    python launch/bench/tokenizer_report.py --work /tmp/recbase-tokenizer

Prepares (once, cached under --work) MovieLens + Amazon Scientific from ../shared/data and the demo world, embeds
them with the packaged all-MiniLM-L6-v2, then prints two Markdown tables:

1. every tokenizer trained on MovieLens + Amazon Scientific together (4 x 256), metrics on those catalogs;
2. tokenizers trained on MovieLens + the demo world, encoding Amazon Scientific (never seen in training) with
   per-domain normalisation (its own catalog mean), with the training domains' pooled statistics instead, and
   with no normalisation at all.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from recbase.config import apply_overrides, from_dict
from recbase.data.ingest import ingest
from recbase.data.synthetic import generate_world
from recbase.data.tables import list_domains
from recbase.io import atomic_write_text
from recbase.tokenizer.embed import embed_folder
from recbase.tokenizer.report import tokenizer_report
from recbase.tokenizer.train import TokenizerConfig, load_domain_embeddings, train_tokenizer

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
MOVIELENS, AMAZON = "movielens-latest-small", "amazon-scientific"

PLAIN = ["clvae.curriculum=false", "clvae.kmeans_init=false", "clvae.reinit_dead=false", "clvae.entropy_weight=0"]
VARIANTS = [
    ("CL-VAE", ["kind=clvae"]),
    ("CL-VAE w/o curriculum", ["kind=clvae", "clvae.curriculum=false"]),
    ("CL-VAE w/o re-init", ["kind=clvae", "clvae.reinit_dead=false"]),
    ("CL-VAE w/o entropy", ["kind=clvae", "clvae.entropy_weight=0"]),
    ("CL-VAE w/o k-means init", ["kind=clvae", "clvae.kmeans_init=false"]),
    ("plain RQ-VAE", ["kind=clvae", *PLAIN]),
    ("RQ-Kmeans", ["kind=rqkmeans"]),
    ("RQ-Kmeans balanced", ["kind=rqkmeans", "rqkmeans.balanced=true"]),
    ("FSQ (4 levels/dim x 4 dims)", ["kind=fsq"]),
]
HELD_OUT = [
    ("CL-VAE, own catalog mean (default)", ["kind=clvae"], True),
    ("CL-VAE, training domains' pooled mean", ["kind=clvae"], False),
    ("CL-VAE, no normalisation", ["kind=clvae", "normalization=none"], True),
    ("RQ-Kmeans, own catalog mean (default)", ["kind=rqkmeans"], True),
    ("RQ-Kmeans, training domains' pooled mean", ["kind=rqkmeans"], False),
    ("RQ-Kmeans, no normalisation", ["kind=rqkmeans", "normalization=none"], True),
]


def prepare(work: Path) -> Path:
    """Ingested tables of both real datasets and the demo world under ``work/data``, embedded under ``work/emb``."""
    data = work / "data"
    have = {p.name for p in list_domains(data)} if data.exists() else set()
    if MOVIELENS not in have:
        ingest("movielens", SHARED_DATA / MOVIELENS, data)
    if AMAZON not in have:
        ingest("recbole", SHARED_DATA / AMAZON, data, domain=AMAZON, kind="product")
    if "movies" not in have:
        generate_world(data, seed=0)
    embed_folder(data, work / "emb")
    return data


def train_and_report(overrides: list[str], embeddings: dict, train: list[str], model: str, own_norm: bool = True):
    cfg = from_dict(TokenizerConfig, apply_overrides({}, overrides))
    start = time.perf_counter()
    tok, _ = train_tokenizer(cfg, {d: embeddings[d] for d in train}, model, progress=False)
    seconds = time.perf_counter() - start
    report = tokenizer_report(tok, embeddings, normalize_new=own_norm)
    report.pop("_codes")
    return {**report, "train_seconds": seconds}


def row(name: str, s: dict, seconds: float) -> str:
    lv = s["levels"]
    return (f"| {name} | {' / '.join(str(x['used']) for x in lv)} | {lv[0]['perplexity']:.0f} | "
            f"{100 * lv[0]['largest_share']:.1f}% | {100 * s['collision_rate']:.1f}% | {s['recon_mse']:.3f} | "
            f"{s['recon_cosine']:.3f} | {seconds:.0f} |")


HEADER = ("| tokenizer | used codes L1 / L2 / L3 / L4 (of 256) | L1 perplexity | L1 largest bucket | collisions "
          "| recon MSE | recon cos | train s |\n|---|---|---|---|---|---|---|---|")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default="/tmp/recbase-tokenizer", help="cache folder for tables and embeddings")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest for these small models)")
    p.add_argument("--only", help="comma-separated table numbers to run (default: 1,2)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    data = prepare(work)
    embeddings, model = load_domain_embeddings(data, work / "emb")
    world = [d for d in embeddings if d not in (MOVIELENS, AMAZON)]
    tables = (args.only or "1,2").split(",")
    print(f"# tokenizer comparison — {platform.machine()}, {torch.get_num_threads()} thread(s), load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC\n")
    print(f"`{' '.join(['python', *sys.argv])}`; embeddings `{model}`; "
          + ", ".join(f"{d} {len(e):,}" for d, e in embeddings.items()) + " items\n")
    results: dict = {}
    if "1" in tables:
        print(f"## Trained and measured on {MOVIELENS} + {AMAZON} "
              f"({len(embeddings[MOVIELENS]) + len(embeddings[AMAZON]):,} items), 4 x 256\n\n{HEADER}")
        for name, overrides in VARIANTS:
            r = train_and_report(overrides, embeddings, [MOVIELENS, AMAZON], model)
            results[f"both/{name}"] = r
            print(row(name, r["summary"]["trained"], r["train_seconds"]), flush=True)
    if "2" in tables:
        print(f"\n## Trained on {MOVIELENS} + demo world ({', '.join(world)}); {AMAZON} encoded as an unseen "
              f"domain, 4 x 256\n\n{HEADER}")
        for name, overrides, own in HELD_OUT:
            r = train_and_report(overrides, embeddings, [MOVIELENS, *world], model, own_norm=own)
            results[f"held-out/{name}"] = r
            print(row(name, r["domains"][AMAZON], r["train_seconds"]), flush=True)
    atomic_write_text(work / "tokenizer_report.json", json.dumps(results, indent=1) + "\n")
    print(f"\nfull results: {work / 'tokenizer_report.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
