"""Throughput of the item tokenizer stages on this machine, each beside a baseline measured in the same run.

    python launch/bench/bench_tokenizer.py --data /tmp/recbase-tokenizer/data --emb /tmp/recbase-tokenizer/emb

(``launch/bench/tokenizer_report.py --work /tmp/recbase-tokenizer`` prepares both folders.)

- ``recbase embed`` (resumable chunks, atomic writes) vs calling ``SentenceTransformer.encode`` on the same texts;
- ``Tokenizer.encode`` (normalisation + encoder + ``kernels.rq_search``) vs a plain ``torch.cdist`` residual
  search over the same latents, for CL-VAE and RQ-Kmeans artifacts; the codes must agree.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from kernels.benchmarking import cdist_codes
from recbase.config import apply_overrides, from_dict
from recbase.data.tables import DomainTables, IngestSummary, make_interactions_table, read_items, write_domain
from recbase.tokenizer.embed import SentenceTransformerEmbedder, embed_folder, select_domains
from recbase.tokenizer.train import TokenizerConfig, load_domain_embeddings, train_tokenizer


def timed(fn, repeat: int = 1):
    """(result of the last call, best seconds over ``repeat`` calls)."""
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return out, best


def bench_embed(data: Path, n_items: int, batch_size: int) -> None:
    domain_dir = select_domains(data)[0]
    items = read_items(domain_dir).slice(0, n_items)
    texts = items.column("text").to_pylist()
    embedder = SentenceTransformerEmbedder(batch_size=batch_size)
    embedder.encode(texts[:batch_size])  # warm-up
    _, direct = timed(lambda: embedder.encode(texts))
    with tempfile.TemporaryDirectory() as tmp:
        name = domain_dir.name
        inter = make_interactions_table(name, [], [], [])
        write_domain(DomainTables(name, items.select(["domain", "item_id", "text"]), inter, IngestSummary(name)),
                     Path(tmp) / "data")
        _, stage = timed(lambda: embed_folder(Path(tmp) / "data", Path(tmp) / "emb", batch_size=batch_size,
                                              chunk_size=256, progress=False))
    print(f"| embed: SentenceTransformer.encode (baseline) | {len(texts):,} | {len(texts) / direct:,.0f} | |")
    print(f"| embed: `recbase embed` (chunks of 256, atomic writes) | {len(texts):,} | {len(texts) / stage:,.0f} | |")


def bench_encode(data: Path, emb_dir: Path, repeat: int) -> None:
    embeddings, model = load_domain_embeddings(data, emb_dir)
    union = np.concatenate(list(embeddings.values()))
    first = next(iter(embeddings))
    for name, overrides in (("RQ-Kmeans", ["kind=rqkmeans", "rqkmeans.iters=2"]),
                            ("CL-VAE", ["kind=clvae", "clvae.curriculum=false", "clvae.epochs=1"])):
        cfg = from_dict(TokenizerConfig, apply_overrides({}, overrides))
        tok, _ = train_tokenizer(cfg, {first: embeddings[first]}, model, progress=False)
        stats = tok.compute_stats(union)
        codes, t_tok = timed(lambda: tok.encode(union, stats), repeat)

        def baseline():
            with torch.no_grad():
                x = torch.from_numpy(tok.normalize(union, stats))
                return cdist_codes(tok.encoder(x) if tok.encoder is not None else x, tok.codebooks)

        ref, t_ref = timed(baseline, repeat)
        agree = float((ref.numpy() == codes).all(1).mean())
        print(f"| encode {name} 4 x 256: torch.cdist residual search (baseline) | {len(union):,} | "
              f"{len(union) / t_ref:,.0f} | |")
        print(f"| encode {name} 4 x 256: `Tokenizer.encode` (rq_search kernel dispatcher) | {len(union):,} | "
              f"{len(union) / t_tok:,.0f} | codes equal to baseline for {100 * agree:.2f}% of items |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="data folder (first domain's texts are embedded)")
    p.add_argument("--emb", required=True, help="embeddings of every domain in --data")
    p.add_argument("--embed-items", type=int, default=512, help="items embedded in the embedding benchmark")
    p.add_argument("--batch-size", type=int, default=64, help="encoder batch size")
    p.add_argument("--repeat", type=int, default=3, help="encoding runs; the best is reported")
    args = p.parse_args(argv)
    print(f"# tokenizer throughput — {platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} "
          f"threads, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores, "
          f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC\n\n`{' '.join(['python', *sys.argv])}`\n")
    print("| what | items | items/s | note |\n|---|---|---|---|")
    bench_embed(Path(args.data), args.embed_items, args.batch_size)
    bench_encode(Path(args.data), Path(args.emb), args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
