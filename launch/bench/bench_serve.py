"""Load test of ``recbase serve`` on localhost: requests/s and p50/p99 latency of POST /recommend and POST /score,
against the same calls made in-process (no HTTP) in the same run, and GET /health (HTTP alone).

    python launch/bench/bench_serve.py --model demo_out/run/hf --tokenizer demo_out/tokenizer \\
        --catalog demo_out/data/news [--requests 200] [--concurrency 1 4] [--k 10] [--candidates 20]

The server is the real command (``python -m recbase serve --port 0``) in its own process; the clients are threads
of this one, each on its own connection per request (urllib). Histories are the last ``--history-items`` items of
the catalog's real users (``interactions.parquet`` beside the items), cycled. Every line runs once per round on
its slice of the requests, the lines interleaved, so that a change in the machine's load between lines does not
become a ratio; the HTTP/in-process ratio printed is the median over rounds of the same round's rates.
Bounded: ``--requests`` calls per line, a ``--timeout`` per call, and the server is stopped at the end (or on any
failure).
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

from recbase.data.tables import user_histories
from recbase.recommend import Recommender


def percentiles(ms: list[float]) -> str:
    a = np.asarray(ms)
    return f"p50 {np.percentile(a, 50):7.1f} ms  p99 {np.percentile(a, 99):7.1f} ms"


def run_calls(call, payloads: list, concurrency: int) -> tuple[float, list[float]]:
    """Run ``call(payload)`` for every payload on ``concurrency`` threads: (wall seconds, latency ms per call)."""
    def timed(p):
        t0 = time.perf_counter()
        call(p)
        return (time.perf_counter() - t0) * 1000

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        ms = list(pool.map(timed, payloads))
    return time.perf_counter() - start, ms


def measure_interleaved(plan: dict, rounds: int) -> dict[str, dict]:
    """Every line of ``plan`` (name -> (call, payloads, concurrency)) once per round, on that round's slice of its
    payloads, so that a change of machine load hits every line alike. Per line: requests, wall, latencies and
    the rate of each round."""
    out = {name: {"n": 0, "wall": 0.0, "ms": [], "rates": []} for name in plan}
    for call, payloads, _ in plan.values():
        call(payloads[0])   # warm-up, not timed
    for r in range(rounds):
        for name, (call, payloads, concurrency) in plan.items():
            part = payloads[r::rounds]
            wall, ms = run_calls(call, part, concurrency)
            acc = out[name]
            acc["n"] += len(part)
            acc["wall"] += wall
            acc["ms"] += ms
            acc["rates"].append(len(part) / wall)
    return out


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
    p.add_argument("--requests", type=int, default=200, help="calls per line, split over the rounds")
    p.add_argument("--rounds", type=int, default=5, help="every line runs once per round, interleaved")
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
    sequences = user_histories(source if source.is_dir() else source.parent)
    histories = [sequences[u][-args.history_items:] for u in sorted(sequences)[:args.requests]]
    rng = np.random.default_rng(0)
    rec_bodies = [{"history": histories[i % len(histories)], "k": args.k} for i in range(args.requests)]
    score_bodies = [{"history": b["history"], "candidates": [catalog.item_ids[j] for j in
                     rng.choice(len(catalog), size=args.candidates, replace=False)]} for b in rec_bodies]

    print(f"# bench_serve  {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC  {platform.machine()}, "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}, torch threads {__import__('torch').get_num_threads()}")
    print(f"# model {args.model}, catalog {catalog.domain} ({len(catalog):,} items), histories of "
          f"{args.history_items} items from {len(histories)} real users, k={args.k}, {args.candidates} candidates "
          f"per /score, {args.requests} requests per line in {args.rounds} interleaved rounds")
    proc, base = start_server(args)
    try:
        plan = {"in-process recommend (baseline)": (lambda b: rec.recommend(b["history"], b["k"]), rec_bodies, 1),
                "in-process score (baseline)": (lambda b: rec.score(b["history"], b["candidates"]), score_bodies, 1),
                "GET /health (HTTP alone)": (get(f"{base}/health", args.timeout), [None] * args.requests, 1)}
        baseline_of = {}
        for c in args.concurrency:
            for path, bodies in (("recommend", rec_bodies), ("score", score_bodies)):
                name = f"POST /{path}, {c} client(s)"
                plan[name] = (post(f"{base}/{path}", args.timeout), bodies, c)
                baseline_of[name] = f"in-process {path} (baseline)"
        results = measure_interleaved(plan, args.rounds)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    for name, r in results.items():
        line = (f"{name:<34} {r['n']:>5} req  {r['n'] / r['wall']:8.1f} req/s  {percentiles(r['ms'])}")
        if name in baseline_of:   # the median over rounds of this round's rate over the baseline's same round
            ratios = np.asarray(r["rates"]) / np.asarray(results[baseline_of[name]]["rates"])
            line += f"  {np.median(ratios):.2f}x in-process (rounds {ratios.min():.2f}-{ratios.max():.2f}x)"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
