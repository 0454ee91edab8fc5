"""Seeded k-means (k-means++ start, Lloyd steps) and a balanced variant, in PyTorch.

Used to initialise each residual level of the CL-VAE from the residuals it will quantise, and as the whole
quantiser of RQ-Kmeans. The balanced variant assigns points by entropic optimal transport with equal cluster
masses (a few Sinkhorn iterations), which keeps every cluster populated on skewed catalogs.
"""
from __future__ import annotations

import torch


def squared_distances(x: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """[N, K] squared Euclidean distances, clamped at 0 against rounding."""
    d = x.pow(2).sum(1, keepdim=True) - 2.0 * x @ centers.T + centers.pow(2).sum(1)
    return d.clamp_min_(0.0)


def kmeans_plus_plus(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeding; with fewer distinct points than ``k`` the leftover centres repeat sampled points."""
    n = x.shape[0]
    centers = torch.empty(k, x.shape[1], dtype=x.dtype)
    first = int(torch.randint(n, (1,), generator=generator))
    centers[0] = x[first]
    closest = squared_distances(x, centers[:1]).squeeze(1)
    for i in range(1, k):
        total = closest.sum()
        if total <= 0:
            idx = int(torch.randint(n, (1,), generator=generator))
        else:
            idx = int(torch.multinomial(closest / total, 1, generator=generator))
        centers[i] = x[idx]
        closest = torch.minimum(closest, squared_distances(x, centers[i:i + 1]).squeeze(1))
    return centers


def balanced_assign(d: torch.Tensor, iters: int = 30, temperature: float = 0.05) -> torch.Tensor:
    """Assignments [N] close to nearest-centre but with every cluster holding about N/K points.

    Sinkhorn iterations in log space on the transport problem with uniform row and column masses; the cost is
    scaled by its mean so ``temperature`` does not depend on the embedding scale.
    """
    n, k = d.shape
    logits = -d / (temperature * d.mean().clamp_min(1e-12))
    log_col = torch.zeros(k, dtype=d.dtype)
    for _ in range(iters):
        log_row = -torch.logsumexp(logits + log_col, dim=1, keepdim=True)
        log_col = -torch.logsumexp(logits + log_row, dim=0) + torch.log(torch.tensor(n / k, dtype=d.dtype))
    return torch.argmax(logits + log_col, dim=1)


def kmeans(x: torch.Tensor, k: int, iters: int = 20, seed: int = 0, balanced: bool = False,
           max_points: int = 65536) -> torch.Tensor:
    """Centres [k, D] of ``x`` [N, D] (float32). Deterministic for a given seed.

    Empty clusters are re-seeded from the points worst served by their current centre. At most ``max_points``
    (a seeded sample) are used, which bounds the cost on large catalogs.
    """
    if x.dim() != 2 or x.shape[0] == 0:
        raise ValueError(f"k-means needs a non-empty [N, D] tensor, got shape {tuple(x.shape)}")
    g = torch.Generator().manual_seed(seed)
    x = x.detach().float().cpu()
    if x.shape[0] > max_points:
        x = x[torch.randperm(x.shape[0], generator=g)[:max_points]]
    centers = kmeans_plus_plus(x, k, g)
    for _ in range(iters):
        d = squared_distances(x, centers)
        assign = balanced_assign(d) if balanced else d.argmin(1)
        sums = torch.zeros_like(centers).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k)
        filled = counts > 0
        centers[filled] = sums[filled] / counts[filled].unsqueeze(1).float()
        empty = torch.nonzero(~filled).squeeze(1)
        if len(empty):
            worst = d.gather(1, assign.unsqueeze(1)).squeeze(1).argsort(descending=True)
            centers[empty] = x[worst[torch.arange(len(empty)) % len(worst)]]
    return centers
