"""Benchmark of the shard builder and the packed loader on the real datasets in ../shared/data.

    python launch/bench/bench_shards.py [--tokens 5000000] [--work /tmp/recbase-bench-shards]

MovieLens (ml-latest-small) and Amazon Scientific are ingested with the readers, their users are replicated
(``<user>~<k>``) until the corpus holds at least ``--tokens`` tokens, and items get seeded random codes (L=4,
K=2048, the paper's layout: only the number of tokens matters here). Printed, each with a baseline from the same
run:

* build throughput (tokens/s, and per worker) with 1 and 2 shard-writing workers; baseline: WebDataset's TarWriter
  with one user per tar entry;
* bytes per token on disk; baselines: one user per tar entry, and Parquet ``list<int16>`` (zstd);
* loader throughput (real tokens/s) packed with 0, 1 and 2 workers; baseline: unpacked (one user per padded row);
* the cost of the loader's per-shard SHA-256 check: hashing every shard alone, against the in-process loader
  (which includes it) over the same shards.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recbase.data.ingest import read_domain
from recbase.data.loader import PackedLoader
from recbase.data.shard_format import read_manifest, read_shard
from recbase.data.shards import ShardConfig, build_shards
from recbase.data.tables import DomainTables, make_interactions_table, write_domain
from recbase.io import sha256_file

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
LEVELS, K = 4, 2048
SOURCES = (("movielens", "movielens-latest-small"), ("recbole", "amazon-scientific"))


def prepare(work: Path, target_tokens: int) -> tuple[Path, Path, int]:
    """Ingest, replicate users to ``target_tokens``, write tables and random codes; returns data dir, codes, tokens."""
    domains = [read_domain(fmt, DATA / folder, min_user_interactions=5) for fmt, folder in SOURCES]
    base = sum(d.interactions.num_rows * LEVELS + 2 * d.summary.users for d in domains)
    copies = max(1, math.ceil(target_tokens / base))
    rng = np.random.default_rng(0)
    code_cols = {"domain": [], "item_id": [], "codes": []}
    for d in domains:
        inter = d.interactions
        users = inter["user_id"].to_pylist()
        rep = make_interactions_table(
            d.domain, [f"{u}~{k}" for k in range(copies) for u in users], inter["item_id"].to_pylist() * copies,
            np.tile(inter["timestamp"].to_numpy(), copies))
        write_domain(DomainTables(d.domain, d.items, rep, d.summary), work / "data")
        ids = d.items["item_id"].to_pylist()
        code_cols["domain"] += [d.domain] * len(ids)
        code_cols["item_id"] += ids
        code_cols["codes"] += rng.integers(0, K, size=(len(ids), LEVELS)).tolist()
        print(f"  {d.domain}: {d.summary.users:,} users x {copies} copies, {rep.num_rows:,} interactions")
    codes = pa.table({"domain": code_cols["domain"], "item_id": code_cols["item_id"],
                      "codes": pa.array(code_cols["codes"], pa.list_(pa.int32()))})
    codes = codes.replace_schema_metadata({"tokenizer_hash": "bench-random-codes", "codebook_size": str(K)})
    pq.write_table(codes, work / "codes.parquet")
    return work / "data", work / "codes.parquet", base * copies


def bench_build(data: Path, codes: Path, out: Path, workers: int) -> tuple[Path, float]:
    cfg = ShardConfig(data_dir=str(data), codes_path=str(codes), out_dir=str(out), name=f"w{workers}",
                      holdout=0, workers=workers, tokens_per_shard=1_000_000)
    t = time.perf_counter()
    root = build_shards(cfg)
    return root, time.perf_counter() - t


def user_sequences(root: Path) -> list[np.ndarray]:
    return [t[a:b] for s in read_manifest(root)["shards"] for t, o, _ in read_shard(root, s)
            for a, b in zip(o[:-1], o[1:])]


def bench_baselines(users: list[np.ndarray], out: Path) -> dict:
    """One user per tar entry (WebDataset TarWriter) and Parquet list<int16>: time and bytes."""
    import webdataset as wds

    n_tokens = sum(len(u) for u in users)
    path = out / "per-user.tar"
    t = time.perf_counter()
    with wds.TarWriter(str(path)) as sink:
        for i, u in enumerate(users):
            sink.write({"__key__": f"u{i:09d}", "tokens.u16": u.astype("<u2").tobytes()})
    per_user_s = time.perf_counter() - t
    parquet = out / "tokens.parquet"
    pq.write_table(pa.table({"tokens": pa.array([u.astype(np.int16) for u in users], pa.list_(pa.int16()))}),
                   parquet, compression="zstd")
    return {"per_user_tar_tok_s": n_tokens / per_user_s, "per_user_tar_bytes_per_token": path.stat().st_size / n_tokens,
            "parquet_bytes_per_token": parquet.stat().st_size / n_tokens}


def bench_loader(root: Path, num_workers: int, packed: bool, seq_len: int, batch: int, max_tokens: int) -> dict:
    loader = PackedLoader(root, seq_len=seq_len, micro_batch_size=batch, num_workers=num_workers, packed=packed,
                          seed=0, num_epochs=1)
    real = slots = 0
    t = time.perf_counter()
    for b in loader:
        real += int((b["input_ids"] != loader.vocab.pad_id).sum())
        slots += b["input_ids"].numel()
        if real >= max_tokens:
            break
    dt = time.perf_counter() - t
    return {"tok_s": real / dt, "fill": real / slots, "tokens": real, "seconds": dt}


def bench_payload_check(root: Path) -> dict:
    """Time to hash every shard once, as the loader does before decoding one (page cache warm, as in training)."""
    shards = read_manifest(root)["shards"]
    t = time.perf_counter()
    for s in shards:
        sha256_file(root / s["path"])
    dt = time.perf_counter() - t
    return {"tok_s": sum(s["tokens"] for s in shards) / dt, "seconds": dt}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=5_000_000, help="replicate users until at least this many tokens")
    p.add_argument("--work", default="/tmp/recbase-bench-shards", help="scratch folder (deleted first)")
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--batch", type=int, default=8)
    args = p.parse_args()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    print(f"# bench_shards  {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC  "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, python {platform.python_version()}")
    print(f"# command: {' '.join([Path(sys.argv[0]).as_posix()] + sys.argv[1:])}")
    data, codes, n_expected = prepare(work, args.tokens)

    results = {}
    bench_build(data, codes, work / "warmup", 1)   # first-call costs (imports, page cache) out of the timings
    for workers in (1, 2):
        root, secs = bench_build(data, codes, work / "shards", workers)
        m = read_manifest(root)["totals"]["train"]
        results[f"build_w{workers}"] = {"tok_s": m["tokens"] / secs, "tok_s_per_worker": m["tokens"] / secs / workers,
                                        "seconds": secs, "tokens": m["tokens"], "shards": m["shards"],
                                        "bytes_per_token": m["bytes"] / m["tokens"]}
    root = work / "shards" / "w1"
    results["baselines"] = bench_baselines(user_sequences(root), work)
    for workers in (0, 1, 2):
        results[f"loader_packed_w{workers}"] = bench_loader(root, workers, True, args.seq_len, args.batch, args.tokens)
    results["loader_unpacked_w2"] = bench_loader(root, 2, False, args.seq_len, args.batch, args.tokens)
    results["payload_check"] = bench_payload_check(root)

    b1, b2, base = results["build_w1"], results["build_w2"], results["baselines"]
    print(f"\ncorpus: {b1['tokens']:,} tokens in {b1['shards']} shards (build includes reading the tables)")
    print(f"build, 1 worker : {b1['tok_s']:>12,.0f} tokens/s  ({b1['seconds']:.1f} s)")
    print(f"build, 2 workers: {b2['tok_s']:>12,.0f} tokens/s  ({b2['tok_s_per_worker']:,.0f} per worker)")
    print(f"  baseline, one user per tar entry (TarWriter): {base['per_user_tar_tok_s']:,.0f} tokens/s (write only)")
    print(f"bytes/token on disk: {b1['bytes_per_token']:.2f}  (one user per tar entry: "
          f"{base['per_user_tar_bytes_per_token']:.2f}; Parquet list<int16> zstd: {base['parquet_bytes_per_token']:.2f})")
    for key, label in (("loader_packed_w0", "packed, in-process"), ("loader_packed_w1", "packed, 1 worker"),
                       ("loader_packed_w2", "packed, 2 workers"), ("loader_unpacked_w2", "unpacked (baseline), 2 workers")):
        r = results[key]
        print(f"loader {label:<31}: {r['tok_s']:>12,.0f} real tokens/s, rows {100 * r['fill']:.1f}% full")
    check, w0 = results["payload_check"], results["loader_packed_w0"]
    print(f"payload SHA-256 check alone: {check['tok_s']:>12,.0f} tokens/s, "
          f"{w0['tok_s'] / check['tok_s']:.1%} of the in-process loader's time per token")
    print("\n" + json.dumps(results, indent=1))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
