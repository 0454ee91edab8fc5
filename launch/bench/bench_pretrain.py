"""Pretraining throughput on this machine for two or more values of one setting, by default packed rows (many
users per row) vs one padded user per row.

    python launch/bench/bench_pretrain.py [--config tiny.json] [--steps 20] [--shards DIR] [--vary KEY=A,B,...]

Every run trains the same model (``--config``, one process) from the same initial weights on the same shards; only
the ``--vary`` key differs (default ``data.packed=false,true``; e.g. ``deepspeed.zero_stage=3,0``), and the first
value is the baseline measured in the same invocation. Without ``--shards`` the demo-world shards of the training
tests are built in a temporary folder (``tests/train_world.py``: seeded demo world, random item codes, the real
shard builder). Reports tokens/s over all positions (padding included: what the hardware computes) and label
tokens/s (what trains the model), after ``--warmup`` untimed steps, and each run's losses (equal losses show that
the setting changes speed only).
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]


def measure(config: str, overrides: list[str], steps: int, warmup: int) -> dict:
    from recbase.train.config import load_train_config
    from recbase.train.loop import Trainer
    from recbase.train.throughput import measure_steps

    return measure_steps(Trainer(load_train_config(config, overrides)), steps, warmup)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="tiny.json")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--shards", default="", help="shard folder (default: build demo-world shards)")
    parser.add_argument("--vary", default="data.packed=false,true", metavar="KEY=A,B",
                        help="the setting compared; the first value is the baseline")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = parser.parse_args()
    key, _, listed = args.vary.partition("=")
    values = [v for v in listed.split(",") if v]
    if not key or len(values) < 2:
        parser.error(f"--vary {args.vary!r}: give KEY=A,B with at least two values")

    with tempfile.TemporaryDirectory(prefix="bench-pretrain-") as tmp:
        shards = args.shards
        if not shards:
            sys.path.insert(0, str(REPO / "tests"))
            from train_world import make_train_shards

            shards = str(make_train_shards(Path(tmp) / "world", users_per_domain=400))
        results = {}
        for i, value in enumerate(values):
            run = Path(tmp) / f"run{i}"
            overrides = [f"data.shards={shards}", f"checkpoint.dir={run}/ckpt", f"logging.dir={run}/logs",
                         "checkpoint.resume=none", "logging.valid_batches=0", "logging.tensorboard=false",
                         *args.overrides, f"{key}={value}"]
            results[value] = measure(args.config, overrides, args.steps, args.warmup)

    from recbase.train.engine import shutdown

    shutdown()
    print(f"# bench_pretrain  {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(f"# host: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads "
          f"{torch.get_num_threads()}, torch {torch.__version__}, "
          f"{'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU only'}")
    print(f"# command: python launch/bench/bench_pretrain.py {' '.join(sys.argv[1:])}")
    print(f"# config {args.config}, {args.steps} timed steps after {args.warmup} warm-up steps, same shards and init")
    base = results[values[0]]
    print(f"{key:<28}{'tokens/s':>12}{'label tok/s':>14}{'labels/pos':>12}{'s/step':>9}{'loss first->last':>20}"
          f"{'label tok/s ratio':>19}")
    for value, r in results.items():
        print(f"{value:<28}{r['tokens_per_s']:>12,.0f}{r['label_tokens_per_s']:>14,.0f}{r['fill']:>12.1%}"
              f"{r['s_per_step']:>9.3f}{r['first_loss']:>11.4f} -> {r['last_loss']:.4f}"
              f"{r['label_tokens_per_s'] / base['label_tokens_per_s']:>18.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
