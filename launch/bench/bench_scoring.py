"""Candidate scoring throughput: naive (one full forward per pair) vs fast, in its two layouts — *cached* (each
user alone: history once with its KV cache, candidates as masked branches) and *batched* (users as rows of one
forward, each row a history and its candidate branches) — on the same random Qwen2 and the same users, with the
agreement between them.

    python launch/bench/bench_scoring.py [--users 8] [--history-items 50] [--candidates 20] [--device cpu]

Run it with ``--candidates 2`` too: the default eval sets hold one positive and one negative per user, where
sharing the history over candidates alone gains little and batching users is what counts.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import tiny_qwen2
import torch

from recbase.eval.scoring import CandidateScorer


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=8)
    p.add_argument("--history-items", type=int, default=50)
    p.add_argument("--candidates", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=256, help="candidates per forward, cached layout")
    p.add_argument("--batch-tokens", type=int, default=8192, help="padded tokens per forward, batched layout")
    tiny_qwen2.add_model_arguments(p)
    args = p.parse_args()
    vocab, model = tiny_qwen2.build(args)
    rng = np.random.default_rng(0)
    users = []
    for _ in range(args.users):
        codes = rng.integers(0, args.codebook_size, size=(args.history_items + args.candidates, args.levels))
        tokens = vocab.encode_codes(codes)
        users.append((np.r_[vocab.bos_id, tokens[:args.history_items].reshape(-1)], tokens[args.history_items:]))

    tiny_qwen2.print_header(
        args, model, f"{args.users} users x {args.candidates} candidates, history {args.history_items} items x "
                     f"{args.levels} tokens = {1 + args.history_items * args.levels} tokens")
    histories, candidates = [u[0] for u in users], [u[1] for u in users]
    layouts = {"naive": ("naive", 0), "cached": ("fast", 0), "batched": ("fast", args.batch_tokens)}
    scores, walls = {}, {}
    for name, (mode, batch_tokens) in layouts.items():
        def scorer():
            return CandidateScorer(model, vocab.levels, vocab.bos_id, mode, args.batch_size, batch_tokens)

        scorer().score_users(histories[:2], candidates[:2])  # warm-up, not timed
        s = scorer()
        t0 = time.perf_counter()
        scores[name] = s.score_users(histories, candidates)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        walls[name] = time.perf_counter() - t0
        print(f"{name:>7}: {s.timing.pairs} pairs in {walls[name]:.3f} s = {s.timing.pairs / walls[name]:,.1f} "
              f"pairs/s ({walls[name] / len(users) * 1e3:.2f} ms per user)")
    for name in ("cached", "batched"):
        diff = max(float(np.abs(a - b).max()) for a, b in zip(scores[name], scores["naive"]))
        print(f"speed-up {name} vs naive: {walls['naive'] / walls[name]:.1f}x; "
              f"max |{name} - naive| log-prob = {diff:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
