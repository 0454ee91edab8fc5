"""RQ-Kmeans (OneRec): no networks, each level is k-means on the residuals left by the levels above it.

The balanced variant clusters each level with equal-size assignments (:func:`kmeans.balanced_assign`); items
are still encoded by nearest codeword, so the residuals passed down follow the encoding rule.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch
from tqdm import tqdm

from recbase.tokenizer.kmeans import kmeans
from recbase.tokenizer.modules import residual_codes

log = logging.getLogger(__name__)


@dataclass
class RQKmeansConfig:
    iters: int = 25            # Lloyd iterations per level
    balanced: bool = False     # equal-size clusters while training each level


def train_rqkmeans(x: torch.Tensor, levels: int, codebook_size: int, cfg: RQKmeansConfig, seed: int = 0,
                   progress: bool = True) -> torch.Tensor:
    """Codebooks [L, K, D] for normalised embeddings ``x`` [N, D]."""
    start = time.perf_counter()
    codebooks = torch.empty(levels, codebook_size, x.shape[1])
    r = x.float()
    for level in tqdm(range(levels), desc="rq-kmeans", unit="level", disable=not progress):
        codebooks[level] = kmeans(r, codebook_size, iters=cfg.iters, seed=seed + 1000 * level, balanced=cfg.balanced)
        codes = residual_codes(r, codebooks[level:level + 1])[:, 0]
        r = r - codebooks[level, codes]
    log.info("rq-kmeans: %d levels on %d items in %.1fs", levels, len(x), time.perf_counter() - start)
    return codebooks
