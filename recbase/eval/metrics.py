"""Ranking metrics for candidate scoring (AUC, GAUC) and full-catalog retrieval (Recall@K, NDCG@K, MRR).

AUC is the Wilcoxon-Mann-Whitney statistic: the probability that a random positive outranks a random negative,
ties counting one half. It is computed from average ranks in O(n log n), never by comparing all pairs.
GAUC is the per-user AUC averaged over users that have both a positive and a negative; by default every user
weighs the same (the paper's per-user mean), optionally each user weighs by their number of pos × neg pairs.
"Overall" is the unweighted mean over domains (the paper's Table 1).
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x`` in ascending order; tied values share the mean of their ranks."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    # Start of each run of equal values in sorted order.
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    ends = np.r_[starts[1:], len(x)]
    run_rank = (starts + 1 + ends) / 2.0  # mean of ranks starts+1 .. ends
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.repeat(run_rank, ends - starts)
    return ranks


def auc(scores: Sequence[float], labels: Sequence[int]) -> float:
    """Pooled AUC of ``scores`` against binary ``labels``; NaN when only one class is present."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    if scores.shape != labels.shape:
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} differ in shape")
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN")
    pos = labels == 1
    n_pos = int(pos.sum())
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    rank_sum = average_ranks(scores)[pos].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def gauc(groups: Sequence, scores: Sequence[float], labels: Sequence[int], weighted: bool = False) -> float:
    """Per-group (per-user) AUC averaged over groups with both classes.

    ``weighted=False`` (default, the paper's GAUC): every user counts once. ``weighted=True``: each user's AUC
    weighs by its number of positive × negative pairs. NaN when no user has both classes.
    """
    groups = np.asarray(groups)
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    order = np.argsort(groups, kind="mergesort")
    g = groups[order]
    bounds = np.flatnonzero(np.r_[True, g[1:] != g[:-1], True])
    values, weights = [], []
    for a, b in zip(bounds[:-1], bounds[1:]):
        idx = order[a:b]
        n_pos = int((labels[idx] == 1).sum())
        n_neg = len(idx) - n_pos
        if n_pos == 0 or n_neg == 0:
            continue
        values.append(auc(scores[idx], labels[idx]))
        weights.append(n_pos * n_neg if weighted else 1)
    if not values:
        return float("nan")
    return float(np.average(values, weights=weights))


def overall(per_domain: Iterable[float]) -> float:
    """Unweighted mean over domains, ignoring NaN (a domain where the metric is undefined)."""
    values = [v for v in per_domain if v is not None and not math.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def retrieval_metrics(target_ranks: Sequence[float], ks: Sequence[int] = (1, 5, 10, 20)) -> dict[str, float]:
    """Recall@K, NDCG@K and MRR from each user's 1-based rank of the held-out target.

    A target the retrieval did not return has rank ``inf`` (it adds 0 to every metric; MRR is thus truncated at
    the length of the returned list). With one relevant item the ideal DCG is 1, so NDCG@K = 1/log2(rank + 1).
    """
    ranks = np.asarray(target_ranks, dtype=np.float64)
    if len(ranks) == 0:
        raise ValueError("no users to compute retrieval metrics on")
    if (ranks < 1).any():
        raise ValueError("ranks are 1-based; got a rank below 1")
    out: dict[str, float] = {}
    for k in ks:
        hit = ranks <= k
        out[f"recall@{k}"] = float(hit.mean())
        out[f"ndcg@{k}"] = float(np.where(hit, 1.0 / np.log2(np.where(hit, ranks, 1.0) + 1.0), 0.0).mean())
    out["mrr"] = float((1.0 / ranks).mean())
    return out
