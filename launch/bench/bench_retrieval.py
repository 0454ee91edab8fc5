"""Catalog retrieval throughput: one user per beam search (``Retriever.retrieve``) vs users batched per forward
(``Retriever.retrieve_batch``) on the same random Qwen2, catalog and users, with the agreement between them.

    python launch/bench/bench_retrieval.py [--users 256] [--items 3000] [--codebook-size 256] [--batch-users 1 16]

``--batch-users 1`` still takes the batched code path (one user per forward): it separates what the beam tree in
the KV cache gains (one token per beam and level instead of the beam's whole prefix) from what sharing forwards
between users gains.

History lengths are drawn uniformly from ``--min-items`` to ``--max-items`` items (eval sets hold users of very
different lengths, so the batched rows pad), and the catalog's codes are random, so the trie is as wide as a
sparse real catalog at the first level and nearly a chain below it.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import tiny_qwen2
import torch

from recbase.eval import retrieval
from recbase.eval.retrieval import Retriever, select_beams
from recbase.eval.trie import CodeTrie


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=256)
    p.add_argument("--min-items", type=int, default=10, help="shortest history, in items")
    p.add_argument("--max-items", type=int, default=50, help="longest history, in items")
    p.add_argument("--items", type=int, default=3000, help="catalog size")
    p.add_argument("--beam-width", type=int, default=20)
    p.add_argument("--batch-users", type=int, nargs="+", default=[1, 4, 8, 16, 32, 64])
    p.add_argument("--batch-tokens", type=int, default=1 << 20, help="padded history tokens per forward (cap)")
    tiny_qwen2.add_model_arguments(p)
    args = p.parse_args()
    vocab, model = tiny_qwen2.build(args)
    rng = np.random.default_rng(0)
    codes = rng.integers(0, args.codebook_size, size=(args.items, args.levels))
    trie = CodeTrie.build(codes, [f"i{j}" for j in range(args.items)], args.codebook_size, args.device)
    lengths = rng.integers(args.min_items, args.max_items + 1, size=args.users)
    histories = [np.r_[vocab.bos_id, vocab.encode_codes(codes[rng.integers(0, args.items, size=n)]).reshape(-1)]
                 for n in lengths]

    def sync() -> None:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    tiny_qwen2.print_header(
        args, model, f"catalog {args.items} items, {trie.n_tuples} tuples, {args.levels} levels x "
                     f"{args.codebook_size} codes; beam {args.beam_width}; histories {args.min_items}-{args.max_items} "
                     f"items (mean {1 + lengths.mean() * args.levels:.0f} tokens)")

    single = Retriever(model, trie, vocab.n_special, vocab.bos_id, args.beam_width)
    single.retrieve(histories[0])  # warm-up, not timed
    t0 = time.perf_counter()
    reference = [single.retrieve(h) for h in histories]
    sync()
    single_rate = args.users / (time.perf_counter() - t0)
    print(f" single: one user per call, {args.users} users, {single_rate:,.1f} users/s")
    for batch_users in args.batch_users:
        r = Retriever(model, trie, vocab.n_special, vocab.bos_id, args.beam_width, batch_users=batch_users,
                      batch_tokens=args.batch_tokens, pad_id=vocab.pad_id)
        r.retrieve_batch(histories[:batch_users])  # warm-up, not timed
        t0 = time.perf_counter()
        got = r.retrieve_batch(histories)
        sync()
        rate = args.users / (time.perf_counter() - t0)
        same = [a.items == b.items for a, b in zip(got, reference)]
        diff = max([float(np.abs(np.subtract(a.scores, b.scores)).max())
                    for a, b, ok in zip(got, reference, same) if ok], default=float("nan"))
        line = (f"batched: {batch_users:>3} users per forward, {args.users} users, {rate:,.1f} users/s "
                f"({rate / single_rate:.1f}x); same items and order as single: {sum(same)}/{len(same)} users, "
                f"max |score diff| on those {diff:.1e}")
        differing = [h for h, ok in zip(histories, same) if not ok]
        if differing:
            line += f"; the others' smallest gap at a beam cut-off: {cutoff_gap(single, differing):.1e}"
        print(line)
    return 0


def cutoff_gap(retriever: Retriever, histories: list[np.ndarray]) -> float:
    """Smallest score gap between the last kept and the first dropped extension, over the levels of the
    single-user search of ``histories``. Two extensions closer than float32 rounding of a differently padded
    forward can swap at the cut-off; a gap this small says that is why the lists differ."""
    gaps = []

    def spy(user, scores, width):
        ordered = torch.sort(scores, descending=True).values
        if len(ordered) > width:
            gaps.append(float(ordered[width - 1] - ordered[width]))
        return select_beams(user, scores, width)

    retrieval.select_beams = spy
    try:
        for h in histories:
            retriever.retrieve(h)
    finally:
        retrieval.select_beams = select_beams
    return min(gaps, default=float("nan"))


if __name__ == "__main__":
    sys.exit(main())
