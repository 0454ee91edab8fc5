"""In-domain leave-one-out evaluation: TIGER's protocol on a domain the model was trained on.

Per user, in chronological order: the last item is the test target, the second-to-last the validation target,
and everything before is training (the shard builder's ``holdout=1`` split, so no target is ever trained on).
The history of a target is at most the ``max_history`` most recent items before it. Every user with at least
three items is evaluated (one training item, the validation and the test target); the others are counted.

Ranking is over the whole catalog. The model ranks by catalog-constrained beam search (only real items come out;
an item the beam never returns is a miss); the baselines rank every catalog item:

- ``popularity``: items by their number of training interactions, the same list for every user;
- ``text_knn``: items by the cosine of their text embedding with the last history item's (that item excluded);
- ``random``: a seeded uniform rank, the floor (Recall@K = K / catalog size in expectation).

Ties between baseline scores go to the earlier catalog row, so a rank is exact and reproducible.
:mod:`recbase.eval.fusion` re-ranks the beam's items together with the text score's best items.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from recbase.data.sequences import DomainSequences, item_counts
from recbase.eval.metrics import retrieval_metrics
from recbase.eval.retrieval import Retrieved, Retriever
from recbase.tokenizer.embed import unit_rows
from recbase.vocab import Vocab

SPLITS = {"valid": 2, "test": 1}   # split -> position of its target counted from the end of the sequence
MIN_ITEMS = 3                      # a training item, the validation target and the test target
MAX_HISTORY = 20                   # TIGER's history cap, in items
BASELINES = ("popularity", "text_knn", "random")
USERS_PER_CALL = 256               # users handed to the retriever at once; the progress bar moves per call


@dataclass
class LeaveOneOutSet:
    """One split of a domain: per user the history (catalog rows, oldest first) and the target's catalog row."""

    domain: str
    split: str
    user_ids: list[str]
    histories: list[np.ndarray]
    targets: np.ndarray
    skipped: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.user_ids)


def leave_one_out(seqs: DomainSequences, split: str, max_history: int = MAX_HISTORY) -> LeaveOneOutSet:
    """The ``split`` ("valid" or "test") targets of every user of ``seqs`` with their capped histories."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is not one of {', '.join(SPLITS)}")
    if max_history < 1:
        raise ValueError(f"max_history must be at least 1, got {max_history}")
    from_end = SPLITS[split]
    users = np.flatnonzero(seqs.counts >= MIN_ITEMS)
    ends = seqs.starts[users] + seqs.counts[users] - from_end          # row of each user's target
    histories = [seqs.item_rows[max(int(s), int(e) - max_history):int(e)]
                 for s, e in zip(seqs.starts[users], ends)]
    skipped = {f"users with fewer than {MIN_ITEMS} items": int(len(seqs.counts) - len(users))}
    return LeaveOneOutSet(seqs.domain, split, [seqs.user_ids[u] for u in users], histories,
                          seqs.item_rows[ends], {k: v for k, v in skipped.items() if v})


def training_counts(seqs: DomainSequences, n_items: int) -> np.ndarray:
    """Interactions per catalog row over the training part of every sequence (validation and test targets out)."""
    return item_counts(seqs, n_items, exclude_last=len(SPLITS))


def history_tokens(histories: list[np.ndarray], item_tokens: np.ndarray, vocab: Vocab) -> list[np.ndarray]:
    """Model inputs: ``bos`` then the L tokens of each history item (``item_tokens`` is [catalog rows, L])."""
    return [np.concatenate([[vocab.bos_id], item_tokens[h].reshape(-1)]).astype(np.int64) for h in histories]


def ranks_from_scores(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """1-based rank of each row's target column among all columns; ties go to the earlier column."""
    t = scores[np.arange(len(targets)), targets][:, None]
    earlier = np.arange(scores.shape[1])[None, :] < targets[:, None]
    return 1 + (scores > t).sum(1) + ((scores == t) & earlier).sum(1)


def popularity_ranks(counts: np.ndarray, targets: np.ndarray) -> np.ndarray:
    order = np.argsort(-counts, kind="stable")
    rank = np.empty(len(counts), np.int64)
    rank[order] = np.arange(1, len(counts) + 1)
    return rank[targets]


def text_knn_ranks(embeddings: np.ndarray, histories: list[np.ndarray], targets: np.ndarray,
                   batch: int = 1024) -> np.ndarray:
    """Rank of each target by cosine to the last history item's embedding, that item itself ranked last."""
    emb = unit_rows(np.asarray(embeddings, np.float32))
    last = np.fromiter((h[-1] for h in histories), np.int64, len(histories))
    out = np.empty(len(targets), np.int64)
    for a in range(0, len(targets), batch):
        q = last[a:a + batch]
        sims = emb[q] @ emb.T
        sims[np.arange(len(q)), q] = -np.inf
        out[a:a + batch] = ranks_from_scores(sims, targets[a:a + batch])
    return out


def random_ranks(n_items: int, n_users: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, n_items + 1, size=n_users)


def baseline_metrics(loo: LeaveOneOutSet, counts: np.ndarray, embeddings: np.ndarray, ks: list[int],
                     seed: int = 0) -> dict[str, dict]:
    """Recall/NDCG@K of every baseline on ``loo``."""
    n_items = len(counts)
    ranks = {"popularity": popularity_ranks(counts, loo.targets),
             "text_knn": text_knn_ranks(embeddings, loo.histories, loo.targets),
             "random": random_ranks(n_items, len(loo), seed)}
    return {name: retrieval_metrics(ranks[name], ks) for name in BASELINES}


def user_chunks(n_users: int, desc: str):
    """``(start, stop)`` of consecutive chunks of ``USERS_PER_CALL`` users, with a progress bar of users per second."""
    t0 = time.perf_counter()
    with tqdm(total=n_users, desc=desc, unit="user") as bar:
        for start in range(0, n_users, USERS_PER_CALL):
            stop = min(start + USERS_PER_CALL, n_users)
            yield start, stop
            bar.update(stop - start)
            bar.set_postfix(users_per_s=f"{stop / (time.perf_counter() - t0):.1f}", refresh=False)


@dataclass
class Beams:
    """One model's beam for every user of a split, in the split's user order."""

    found: list[Retrieved]
    seconds: float          # wall time of the search that returned them (in this pass, or the one that saved them)
    reused: bool = False    # read back from an earlier pass's file (:mod:`recbase.eval.beam_store`), not searched
    note: str = ""          # where they were read from, or why they were searched


def search_beams(retriever: Retriever, loo: LeaveOneOutSet, item_tokens: np.ndarray, vocab: Vocab,
                 desc: str = "retrieve") -> Beams:
    """Beam search for every user of ``loo``, ``USERS_PER_CALL`` users per call (the same calls, so the same
    batches, wherever a split's beam is searched)."""
    histories = history_tokens(loo.histories, item_tokens, vocab)
    found: list[Retrieved] = []
    t0 = time.perf_counter()
    for start, stop in user_chunks(len(loo), desc):
        found += retriever.retrieve_batch(histories[start:stop])
    return Beams(found, time.perf_counter() - t0)


def model_metrics(retriever: Retriever, loo: LeaveOneOutSet, item_tokens: np.ndarray, vocab: Vocab,
                  item_ids: list[str], ks: list[int], desc: str = "retrieve") -> dict:
    """Recall/NDCG@K of beam-search retrieval on ``loo``, with the time it took and the users per second."""
    beams = search_beams(retriever, loo, item_tokens, vocab, desc)
    ranks = [r.rank_of(item_ids[t]) for r, t in zip(beams.found, loo.targets.tolist())]
    return beam_metrics(ranks, ks, beams.seconds, retriever.beam_width)


def beam_metrics(ranks, ks: list[int], seconds: float, beam_width: int) -> dict:
    """The generative ranking's record: Recall/NDCG@K of the beam's ranks, users, seconds and the beam width."""
    return {**retrieval_metrics(ranks, ks), "users": len(ranks), "seconds": round(seconds, 1),
            "returned_at_least": beam_width}
