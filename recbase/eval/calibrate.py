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

The model's next-code distribution spreads over the training catalogs' codes; a new catalog uses only some of
them, and fewer still after a given prefix. Scores that know the new catalog (:data:`CATALOG_SCORES`):

- **Trie normalisation**: at each level, log P of the candidate's code renormalised over the codes the new
  catalog's prefix trie allows after the candidate's own prefix, so the probabilities of the catalog's code
  tuples sum to 1 (:class:`CatalogTokens` gives the scorer the allowed tokens).
- **Catalog PMI**: log P(item | history) − log of the mean of P(item | h) over a sample of the domain's other eval
  users' histories h: the prior of the new catalog itself, where the ``bos`` prior is the training catalogs'.
- **Level weights**: the per-level terms summed with weights (first level only, halving per level), and every
  catalog PMI defined on the weighted score (the mean is of exp(weighted score)), so all weights 1 is the plain
  catalog PMI.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from recbase.eval.scoring import CandidateScorer
from recbase.eval.trie import CodeTrie
from recbase.vocab import Vocab

# name -> (level weights, renormalised over the catalog's trie, calibration: none | bos | catalog); the reports
# show each as auc_<name> and, fused with the embedding head, auc_<name>_head
CATALOG_SCORES = {
    "trie": ("all", True, "none"),
    "trie_decay": ("decay", True, "none"),
    "trie_pmi": ("all", True, "bos"),
    "cpmi": ("all", False, "catalog"),
    "cpmi_trie": ("all", True, "catalog"),
    "cpmi_trie_first": ("first", True, "catalog"),
    "cpmi_trie_decay": ("decay", True, "catalog"),
}


class CatalogTokens:
    """The concept tokens a catalog allows at each level after a candidate's own prefix (its code trie in token
    space): the ``allowed`` argument of :meth:`~recbase.eval.scoring.CandidateScorer.score_users`."""

    def __init__(self, trie: CodeTrie, vocab: Vocab):
        self.trie = trie
        self.vocab = vocab

    def __call__(self, tokens: torch.Tensor, width: int) -> torch.Tensor:
        """Boolean ``[P, L, width]`` for candidates' tokens ``[P, L]``, all of them catalog items."""
        offsets = self.vocab.n_special + self.vocab.codebook_size * torch.arange(self.vocab.levels,
                                                                                 device=tokens.device)
        codes = self.trie.allowed_codes((tokens - offsets).to(self.trie.child_code[0].device)).to(tokens.device)
        mask = torch.zeros(*tokens.shape, width, dtype=torch.bool, device=tokens.device)
        for level in range(self.vocab.levels):
            lo, hi = self.vocab.level_range(level)
            mask[:, level, lo:hi] = codes[:, level]
        return mask


def distinct_items(candidate_tokens: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    """The distinct candidates' tokens ``[M, L]`` and, per user, the row of each of its candidates among them."""
    unique, inverse = np.unique(np.concatenate(candidate_tokens), axis=0, return_inverse=True)
    return unique, np.split(inverse.reshape(-1), np.cumsum([len(c) for c in candidate_tokens])[:-1])


def empty_history_logprobs(scorer: CandidateScorer, bos_id: int, candidate_tokens: list[np.ndarray],
                           allowed: CatalogTokens | None = None) -> list[np.ndarray]:
    """Per user, the per-token log-probabilities ``[C, L]`` of each candidate after ``bos`` alone (``[C, L, 2]``
    with ``allowed``, as the scorer returns them).

    Every distinct item is scored once (one history shared by all of them), then looked up per user."""
    unique, item_of = distinct_items(candidate_tokens)
    prior = scorer.score_user(np.array([bos_id], dtype=np.int64), unique, allowed)
    return [prior[rows] for rows in item_of]


def level_weights(name: str, levels: int) -> np.ndarray:
    """Weights of the levels: ``all`` (1 each: log P of the item), ``first`` (the first level alone) or ``decay``
    (halving per level: the coarse concepts count most)."""
    weights = {"all": np.ones(levels), "first": np.eye(levels)[0], "decay": 0.5 ** np.arange(levels)}
    return weights[name]


def level_score(scored: np.ndarray, weights: np.ndarray, trie: bool) -> np.ndarray:
    """Σ over levels of weight × the level's log-probability, from the scorer's ``[..., L, 2]`` output; with
    ``trie``, each level's log-probability renormalised over the codes the catalog allows after the prefix."""
    per_level = scored[..., 0] - scored[..., 1] if trie else scored[..., 0]
    return per_level @ weights


@dataclass
class CatalogSample:
    """The domain's distinct candidate items scored after a sample of its eval users' histories: the ingredients
    of the catalog PMI."""

    scored: np.ndarray            # [S, M, L, 2] per sampled user and distinct item, as the scorer returns them
    item_of: list[np.ndarray]     # per eval user, the column (of M) of each of its candidates
    sample_row: np.ndarray        # [U] each eval user's row among the S, -1 when not sampled


def sample_catalog(scorer: CandidateScorer, histories: list[np.ndarray], candidate_tokens: list[np.ndarray],
                   allowed: CatalogTokens, users: int, seed: int, label: str = "") -> CatalogSample:
    """Score every distinct candidate after each of ``users`` eval users' histories (a seeded sample; all of them
    when there are no more)."""
    unique, item_of = distinct_items(candidate_tokens)
    n = min(users, len(histories))
    rows = np.sort(np.random.default_rng(seed).choice(len(histories), size=n, replace=False))
    scored = np.stack([scorer.score_user(histories[r], unique, allowed)
                       for r in tqdm(rows, desc=f"catalog prior {label}", unit="user")])
    sample_row = np.full(len(histories), -1)
    sample_row[rows] = np.arange(n)
    return CatalogSample(scored, item_of, sample_row)


def catalog_pmi(user_scores: list[np.ndarray], sample_scores: np.ndarray, sample: CatalogSample) -> list[np.ndarray]:
    """Per user, each candidate's (log) score minus the log of the mean of exp(score) over the sampled histories
    other than the user's own (``sample_scores`` ``[S, M]``: the same score of every distinct item after each
    sampled history)."""
    out = []
    for u, (scores, items) in enumerate(zip(user_scores, sample.item_of)):
        others = sample_scores[:, items]
        if sample.sample_row[u] >= 0:
            others = np.delete(others, sample.sample_row[u], 0)
        out.append(scores - (np.logaddexp.reduce(others, axis=0) - np.log(len(others))))
    return out


def catalog_scores(scored: list[np.ndarray], prior: list[np.ndarray], sample: CatalogSample | None,
                   levels: int) -> dict[str, list[np.ndarray]]:
    """Per user, every score of :data:`CATALOG_SCORES` from the candidates' ``[C, L, 2]`` after the history and after
    ``bos`` (the catalog PMIs only with a ``sample``)."""
    out = {}
    for name, (weights, trie, calibration) in CATALOG_SCORES.items():
        w = level_weights(weights, levels)
        user = [level_score(s, w, trie) for s in scored]
        if calibration == "bos":
            out[name] = [s - level_score(p, w, trie) for s, p in zip(user, prior)]
        elif calibration == "catalog" and sample is not None:
            out[name] = catalog_pmi(user, level_score(sample.scored, w, trie), sample)
        elif calibration == "none":
            out[name] = user
    return out


def standardise(scores: np.ndarray) -> np.ndarray:
    """Scores of one user's candidates shifted to mean 0 and scaled to unit spread (all zero when constant)."""
    spread = scores.std()
    return (scores - scores.mean()) / spread if spread > 0 else np.zeros_like(scores)


def slate_posterior(scores: np.ndarray, beta: float) -> np.ndarray:
    """One user's candidate scores as the probability that each is the slate's positive: softmax(``beta`` × scores).

    Why: the pooled AUC ranks every user's candidates against every other user's, so besides the order within a
    user (all that GAUC sees, and all that this leaves unchanged) it rewards a score that is comparable across
    users. Raw cosines are not: a user whose candidates all lie close to the history gets high scores for the
    negatives too. The posterior over the user's own candidates is, which is what an eval set of one positive
    among sampled negatives asks for; ``beta`` says how sharply a score difference separates them.
    """
    z = beta * (scores - scores.max())
    e = np.exp(z)
    return e / e.sum()


def fuse(text: list[np.ndarray], model: list[np.ndarray], weight: float) -> list[np.ndarray]:
    """Per user: standardised text similarity + ``weight`` × standardised model score."""
    return [standardise(t) + weight * standardise(m) for t, m in zip(text, model)]
