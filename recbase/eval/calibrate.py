"""Scores of a model on a catalog it never saw, corrected for what the model would say without the user.

A concept-ID model pretrained on other domains ranks a new catalog's items mostly by its training domains' item
prior: its log P(item | history) correlates strongly with the same model's log P(item | empty history), and that
prior means nothing for the new catalog. Two corrections, both zero-shot (they use the model and the candidates'
tokens only, never the domain's interactions):

- **PMI**: log P(item | history) − log P(item | ``bos``), per level, so what is left is how much this user's
  history raises the item above the model's prior (pointwise mutual information between history and item).
- **Fusion with text similarity**: the per-user standardised PMI added, with a weight, to the per-user
  standardised centred text similarity. Standardising within the user puts a log-probability and a cosine on one
  scale, and only the order within a user matters for GAUC.
"""
from __future__ import annotations

import numpy as np

from recbase.eval.scoring import CandidateScorer


def empty_history_logprobs(scorer: CandidateScorer, bos_id: int,
                           candidate_tokens: list[np.ndarray]) -> list[np.ndarray]:
    """Per user, the per-token log-probabilities ``[C, L]`` of each candidate after ``bos`` alone.

    Every distinct item is scored once (one history shared by all of them), then looked up per user."""
    flat = np.concatenate(candidate_tokens)
    unique, inverse = np.unique(flat, axis=0, return_inverse=True)
    prior = scorer.score_user(np.array([bos_id], dtype=np.int64), unique)[inverse.reshape(-1)]
    return np.split(prior, np.cumsum([len(c) for c in candidate_tokens])[:-1])


def standardise(scores: np.ndarray) -> np.ndarray:
    """Scores of one user's candidates shifted to mean 0 and scaled to unit spread (all zero when constant)."""
    spread = scores.std()
    return (scores - scores.mean()) / spread if spread > 0 else np.zeros_like(scores)


def fuse(text: list[np.ndarray], model: list[np.ndarray], weight: float) -> list[np.ndarray]:
    """Per user: standardised text similarity + ``weight`` × standardised model score."""
    return [standardise(t) + weight * standardise(m) for t, m in zip(text, model)]
