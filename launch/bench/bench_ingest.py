"""Ingest throughput on the largest dataset in ../shared/data (MovieLens ml-latest-small, 100,836 ratings).

Baseline, measured in the same run: a plain ``pandas.read_csv`` of the same ``ratings.csv`` (no items, no
checks, no sorting, no output). Then the MovieLens reader alone, reader + filters (``finalize``), and the full
``ingest`` that also writes the Parquet tables. Each is the median of ``--repeats`` runs.

    python launch/bench/bench_ingest.py [--data ../shared/data/movielens-latest-small] [--repeats 5]
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from recbase.data.ingest import ingest, read_domain
from recbase.data.readers import get_reader

DEFAULT_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "movielens-latest-small"


def _median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="a MovieLens CSV folder")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    ratings = args.data / "ratings.csv"
    n = len(pd.read_csv(ratings))
    with tempfile.TemporaryDirectory() as out:
        cases = [
            ("pandas.read_csv(ratings.csv) [baseline]", lambda: pd.read_csv(ratings)),
            ("movielens reader", lambda: get_reader("movielens")(args.data, "bench")),
            ("reader + finalize (filters, sort)", lambda: read_domain("movielens", args.data, "bench")),
            ("ingest (+ write parquet, summary)", lambda: ingest("movielens", args.data, out, "bench")),
        ]
        results = [(name, _median_seconds(fn, args.repeats)) for name, fn in cases]

    print(f"# ingest throughput, {datetime.date.today()}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}, pandas {pd.__version__}")
    print(f"# command: python {' '.join(sys.argv)}")
    print(f"# data: {args.data} ({n:,} interactions), median of {args.repeats} runs")
    base = results[0][1]
    print(f"{'stage':42s} {'seconds':>8s} {'interactions/s':>15s} {'x baseline':>10s}")
    for name, seconds in results:
        print(f"{name:42s} {seconds:8.3f} {n / seconds:15,.0f} {seconds / base:10.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
