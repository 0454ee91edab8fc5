"""Load test of ``recbase serve`` on localhost: requests/s and p50/p99 latency of POST /recommend and POST /score,
against the same calls made in-process (no HTTP) in the same run, and GET /health (HTTP alone).

    python launch/bench/bench_serve.py --model demo_out/run/hf --tokenizer demo_out/tokenizer \\
        --catalog demo_out/data/news [--requests 200] [--rounds 20] [--concurrency 1 4] [--k 10] [--candidates 20]

The server is the real command (``python -m recbase serve --port 0``) in its own process; the clients are threads
of this one, each on its own connection per request (urllib). Histories are the last ``--history-items`` items of
the catalog's real users (``interactions.parquet`` beside the items), cycled.

On a shared machine the load changes within seconds, so no single timing of a line means much. Every line runs
once per round on its slice of the requests, the lines interleaved, many short rounds; each ratio is taken
between two lines of the same round, and what is printed is the median over rounds with its interquartile range
(and the extremes), beside the load average at the start and after each round. Two ratios: HTTP over
in-process (the server's overhead), and N clients over one client (whether concurrent requests gain throughput or
only wait for each other). Each HTTP line also prints the server's own median ``took_ms`` (the model call, lock
wait included): the rest of its latency is HTTP, the framework and the client. A failed call (an error status,
a timeout) is counted per line, never dropped; any failure makes the exit status 1. Bounded: ``--requests`` calls
per line, a ``--timeout`` per call, and the server is stopped at the end (or on any failure).
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


def run_calls(call, payloads: list, concurrency: int) -> tuple[float, list[float], list[str], list]:
    """Run ``call(payload)`` for every payload on ``concurrency`` threads: (wall seconds, latency ms of each
    successful call, the error of each failed one, the answer of each successful one)."""
    def timed(p):
        t0 = time.perf_counter()
        try:
            answer = call(p)
        except Exception as e:   # counted and reported, so one failure does not hide the rest of the run
            return None, f"{type(e).__name__}: {e}", None
        return (time.perf_counter() - t0) * 1000, None, answer

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        done = list(pool.map(timed, payloads))
    wall = time.perf_counter() - start
    return wall, [ms for ms, _, _ in done if ms is not None], [e for _, e, _ in done if e], [a for *_, a in done]


def measure_interleaved(plan: dict, rounds: int) -> tuple[dict[str, dict], list[float]]:
    """Every line of ``plan`` (name -> (call, payloads, concurrency)) once per round, on that round's slice of its
    payloads, so that a change of machine load hits every line alike. Per line: requests, wall, latencies, errors,
    the server's own ``took_ms`` where the answer has one, and the rate of each round; and the 1-minute load
    average after each round."""
    out = {name: {"n": 0, "wall": 0.0, "ms": [], "errors": [], "server_ms": [], "rates": []} for name in plan}
    for call, payloads, _ in plan.values():
        call(payloads[0])   # warm-up, not timed
    load = []
    for r in range(rounds):
        for name, (call, payloads, concurrency) in plan.items():
            part = payloads[r::rounds]
            wall, ms, errors, answers = run_calls(call, part, concurrency)
            acc = out[name]
            acc["n"] += len(part)
            acc["wall"] += wall
            acc["ms"] += ms
            acc["errors"] += errors
            acc["server_ms"] += [a["took_ms"] for a in answers if isinstance(a, dict) and "took_ms" in a]
            acc["rates"].append(len(ms) / wall)
        load.append(os.getloadavg()[0])
    return out, load


def spread(values) -> str:
    """Median [interquartile range] (min-max) of per-round values."""
    q = np.percentile(np.asarray(values), [0, 25, 50, 75, 100])
    return f"{q[2]:.2f} [{q[1]:.2f}-{q[3]:.2f}] ({q[0]:.2f}-{q[4]:.2f})"


def report(results: dict[str, dict], compare: dict[str, list[tuple[str, str]]]) -> list[str]:
    """One line per plan line: requests, errors, overall rate, median per-round rate, latency percentiles, the
    server's own median time per request where it reports one, and for each (label, other line) in
    ``compare[name]`` the per-round ratio of this line's rate to the other's."""
    lines = []
    for name, r in results.items():
        rate = len(r["ms"]) / r["wall"]
        line = (f"{name:<34} {r['n']:>5} req  {len(r['errors'])} failed  {rate:7.1f} req/s "
                f"(round median {np.median(r['rates']):7.1f})  {percentiles(r['ms'])}")
        if r["server_ms"]:   # the model's time inside the server, lock wait included: the rest is HTTP
            line += f"  server p50 {np.median(r['server_ms']):7.1f} ms"
        for label, other in compare.get(name, []):
            ratios = np.asarray(r["rates"]) / np.asarray(results[other]["rates"])
            line += f"  {label} {spread(ratios)}x"
        lines.append(line)
        lines += [f"    failed: {e}" for e in dict.fromkeys(r["errors"])]
    return lines


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
    p.add_argument("--rounds", type=int, default=20, help="every line runs once per round, interleaved")
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
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} (1 min) at the start, torch threads "
          f"{__import__('torch').get_num_threads()}")
    print(f"# model {args.model}, catalog {catalog.domain} ({len(catalog):,} items), histories of "
          f"{args.history_items} items from {len(histories)} real users, k={args.k}, {args.candidates} candidates "
          f"per /score, {args.requests} requests per line in {args.rounds} interleaved rounds")
    proc, base = start_server(args)
    try:
        plan = {"in-process recommend (baseline)": (lambda b: rec.recommend(b["history"], b["k"]), rec_bodies, 1),
                "in-process score (baseline)": (lambda b: rec.score(b["history"], b["candidates"]), score_bodies, 1),
                "GET /health (HTTP alone)": (get(f"{base}/health", args.timeout), [None] * args.requests, 1)}
        compare = {}
        for c in args.concurrency:
            for path, bodies in (("recommend", rec_bodies), ("score", score_bodies)):
                name = f"POST /{path}, {c} client(s)"
                plan[name] = (post(f"{base}/{path}", args.timeout), bodies, c)
                compare[name] = [("vs in-process", f"in-process {path} (baseline)")]
                if c != args.concurrency[0]:
                    compare[name].append((f"vs {args.concurrency[0]} client(s)",
                                          f"POST /{path}, {args.concurrency[0]} client(s)"))
        results, load = measure_interleaved(plan, args.rounds)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    print(f"# load average (1 min) after each round: median {np.median(load):.1f}, {min(load):.1f}-{max(load):.1f}; "
          f"ratios: median over rounds [interquartile range] (min-max)")
    for line in report(results, compare):
        print(line)
    return 1 if any(r["errors"] for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
