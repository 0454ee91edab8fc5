"""Per-domain normalisation of item embeddings, applied before both training and encoding.

Text encoders place each domain in its own narrow cone (all movies near each other, all lab supplies near each
other), so a quantiser trained on some domains and applied to another sends most of the new domain's items to a
handful of codes. Centring every domain on the mean of its own catalog and re-normalising to unit length puts all
domains on the same footing. The statistics of a new domain come from its catalog alone, so encoding it stays
zero-shot. Whitening (ZCA on the domain's covariance) is the stronger option for domains with few dominant
directions.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recbase.errors import UserError

MODES = ("none", "center", "whiten")


@dataclass
class DomainStats:
    """What is needed to normalise one domain: its catalog mean and, for ``whiten``, the ZCA matrix."""

    mean: np.ndarray                   # [D] float32
    whiten: np.ndarray | None = None   # [D, D] float32, or None
    n_items: int = 0


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise UserError(f"unknown normalisation {mode!r}; expected one of {', '.join(MODES)}")
    return mode


def compute_stats(embeddings: np.ndarray, mode: str, eps: float = 1e-2) -> DomainStats | None:
    """Statistics of one domain's whole catalog; ``None`` for mode ``none``.

    ``eps`` (relative to the mean eigenvalue) keeps whitening from blowing up directions the catalog barely uses.
    """
    check_mode(mode)
    if mode == "none":
        return None
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise UserError(f"normalisation needs a catalog of at least 2 items, got shape {x.shape}")
    mean = x.mean(axis=0)
    whiten = None
    if mode == "whiten":
        xc = x - mean
        cov = xc.T @ xc / len(xc)
        vals, vecs = np.linalg.eigh(cov)
        vals = np.clip(vals, 0.0, None) + eps * max(vals.mean(), 1e-12)
        whiten = ((vecs / np.sqrt(vals)) @ vecs.T).astype(np.float32)
    return DomainStats(mean=mean.astype(np.float32), whiten=whiten, n_items=len(x))


def apply(embeddings: np.ndarray, stats: DomainStats | None, mode: str) -> np.ndarray:
    """Normalised float32 copy of ``embeddings``: centred (and whitened), then scaled to unit length."""
    check_mode(mode)
    x = np.asarray(embeddings, dtype=np.float32)
    if mode == "none":
        return x.copy()
    if stats is None:
        raise ValueError(f"normalisation {mode!r} needs domain statistics")
    if stats.mean.shape[0] != x.shape[1]:
        raise ValueError(f"domain statistics have dim {stats.mean.shape[0]}, embeddings have dim {x.shape[1]}")
    x = x - stats.mean
    if mode == "whiten":
        if stats.whiten is None:
            raise ValueError("normalisation 'whiten' needs a whitening matrix in the domain statistics")
        x = x @ stats.whiten
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)
