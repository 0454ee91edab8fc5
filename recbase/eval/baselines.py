"""Model-free scorers for the same (user, candidate) pairs, reported beside every model.

- ``random``: uniform scores seeded by (seed, domain), so each domain gets its own draw (AUC ≈ 0.5, the floor).
- ``text_raw``: cosine between the candidate's text embedding and the mean of the history items' embeddings.
- ``text_centred``: the same after centring every embedding on the domain's own catalog mean and re-normalising.
  It uses the catalog's text only, so it is still zero-shot; it is the bar a zero-shot model has to clear.
- ``popularity``: the candidate's interaction count in the domain (eval targets removed). It learns from the
  domain's interactions, so it is *not* zero-shot; it shows what in-domain data buys.
"""
from __future__ import annotations

from collections import Counter

import numpy as np

from recbase.data.sequences import stable_hash
from recbase.errors import UserError

BASELINES = ("random", "text_raw", "text_centred", "popularity")
LABELS = {"random": "random", "text_raw": "text sim (raw)", "text_centred": "text sim (centred)",
          "popularity": "popularity (not zero-shot)"}


def random_scores(n_candidates: list[int], seed: int, domain: str) -> list[np.ndarray]:
    rng = np.random.default_rng([seed, stable_hash(domain)])
    return [rng.random(n) for n in n_candidates]


def _unit(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norm, 1e-12)


class TextSimilarity:
    """Cosine of a candidate's embedding with the mean of the history's embeddings."""

    def __init__(self, item_ids: list[str], embeddings: np.ndarray, centred: bool):
        emb = np.asarray(embeddings, dtype=np.float32)
        if centred:
            emb = emb - emb.mean(axis=0, keepdims=True)
        self.emb = _unit(emb)
        self.row = {item: i for i, item in enumerate(item_ids)}

    def _rows(self, items: list[str], what: str) -> np.ndarray:
        missing = [i for i in items if i not in self.row]
        if missing:
            raise UserError(f"{what} item {missing[0]!r} has no embedding ({len(missing)} missing)")
        return np.fromiter((self.row[i] for i in items), dtype=np.int64, count=len(items))

    def vectors(self, items: list[str], what: str = "candidate") -> np.ndarray:
        """Unit embeddings ``[N, D]`` of ``items``."""
        return self.emb[self._rows(items, what)]

    def profile(self, history: list[str]) -> np.ndarray:
        """The mean of the history items' unit embeddings (zeros for an empty history)."""
        if not history:
            return np.zeros(self.emb.shape[1], dtype=np.float32)
        return self.vectors(history, "history").mean(axis=0)

    def score(self, history: list[str], candidates: list[str]) -> np.ndarray:
        cand = self.vectors(candidates)
        if not history:
            return np.zeros(len(candidates))
        return (cand @ _unit(self.profile(history))).astype(np.float64)


def popularity_scores(counts: Counter, candidates: list[list[str]]) -> list[np.ndarray]:
    return [np.log1p(np.fromiter((max(counts.get(c, 0), 0) for c in cands), dtype=np.float64, count=len(cands)))
            for cands in candidates]
