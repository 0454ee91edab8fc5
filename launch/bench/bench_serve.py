"""Load test of ``recbase serve`` on localhost: requests/s and p50/p99 latency of POST /recommend and POST /score,
against the same calls made in-process (no HTTP) in the same run, and GET /health (HTTP alone).

    python launch/bench/bench_serve.py --model demo_out/run/hf --tokenizer demo_out/tokenizer \\
        --catalog demo_out/data/news [--requests 200] [--concurrency 1 4] [--k 10] [--candidates 20]

The server is the real command (``python -m recbase serve --port 0``) in its own process; the clients are threads
of this one, each on its own connection per request (urllib). Histories are the last ``--history-items`` items of
the catalog's real users (``interactions.parquet`` beside the items), cycled. Bounded: ``--requests`` calls per
measurement, a ``--timeout`` per call, and the server is stopped at the end (or on any failure).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from recbase.data.tables import INTERACTIONS_FILE
from recbase.eval.inputs import user_sequences
from recbase.recommend import Recommender


def percentiles(ms: list[float]) -> str:
    a = np.asarray(ms)
    return f"p50 {np.percentile(a, 50):7.1f} ms  p99 {np.percentile(a, 99):7.1f} ms"


def measure(name: str, call, payloads: list, concurrency: int) -> float:
    """Run ``call(payload)`` for every payload on ``concurrency`` threads; prints and returns requests/s."""
    def timed(p):
        t0 = time.perf_counter()
        call(p)
        return (time.perf_counter() - t0) * 1000

    call(payloads[0])   # warm-up, not timed
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        ms = list(pool.map(timed, payloads))
    wall = time.perf_counter() - start
    rate = len(payloads) / wall
    print(f"{name:<38} {len(payloads):>5} req  {rate:8.1f} req/s  {percentiles(ms)}", flush=True)
    return rate


def post(url: str, timeout: float):
    def call(body):
        req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            if resp.status != 200:
                raise RuntimeError(f"{url}: HTTP {resp.status}")
            return json.loads(resp.read())
    return call


def get(url: str, timeout: float):
    def call(_):
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.read()
    return call


def start_server(args) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "recbase", "serve", "--model", args.model, "--tokenizer", args.tokenizer,
           "--catalog", args.catalog, "--port", "0", "--device", args.device]
    if args.cache_dir:
        cmd += ["--cache-dir", args.cache_dir]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    timer = threading.Timer(args.startup_timeout, proc.kill)
    timer.start()
    try:
        for line in proc.stdout:
            if line.startswith("serving on "):
                return proc, line.split()[2]
    finally:
        timer.cancel()
    raise RuntimeError(f"recbase serve exited with status {proc.wait()} before serving")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="demo_out/run/hf")
    p.add_argument("--tokenizer", default="demo_out/tokenizer")
    p.add_argument("--catalog", default="demo_out/data/news")
    p.add_argument("--cache-dir", help="catalog cache (default: recbase's)")
    p.add_argument("--requests", type=int, default=200, help="calls per measurement")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4], help="client threads")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--candidates", type=int, default=20, help="candidates per /score call")
    p.add_argument("--history-items", type=int, default=20, help="history length (last items of real users)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per call")
    p.add_argument("--startup-timeout", type=float, default=300.0)
    args = p.parse_args()

    rec = Recommender.from_pretrained(args.model, args.tokenizer, device=args.device, cache_dir=args.cache_dir)
    catalog = rec.load_catalog(args.catalog, progress=False)
    source = Path(args.catalog)
    interactions = (source if source.is_dir() else source.parent) / INTERACTIONS_FILE
    sequences = user_sequences(interactions)
    histories = [sequences[u][-args.history_items:] for u in sorted(sequences)[:args.requests]]
    rng = np.random.default_rng(0)
    rec_bodies = [{"history": histories[i % len(histories)], "k": args.k} for i in range(args.requests)]
    score_bodies = [{"history": b["history"], "candidates": [catalog.item_ids[j] for j in
                     rng.choice(len(catalog), size=args.candidates, replace=False)]} for b in rec_bodies]

    print(f"# bench_serve  {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC  {platform.machine()}, "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}, torch threads {__import__('torch').get_num_threads()}")
    print(f"# model {args.model}, catalog {catalog.domain} ({len(catalog):,} items), histories of "
          f"{args.history_items} items from {len(histories)} real users, k={args.k}, {args.candidates} candidates "
          f"per /score, {args.requests} requests per line")
    direct = {"recommend": measure("in-process recommend (baseline)",
                                   lambda b: rec.recommend(b["history"], b["k"]), rec_bodies, 1),
              "score": measure("in-process score (baseline)",
                               lambda b: rec.score(b["history"], b["candidates"]), score_bodies, 1)}
    proc, base = start_server(args)
    try:
        measure("GET /health (HTTP alone)", get(f"{base}/health", args.timeout), [None] * args.requests, 1)
        for c in args.concurrency:
            for path, bodies in (("recommend", rec_bodies), ("score", score_bodies)):
                rate = measure(f"POST /{path}, {c} client(s)", post(f"{base}/{path}", args.timeout), bodies, c)
                print(f"{'':<38} = {rate / direct[path]:.2f}x the in-process rate")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
