"""Fusing the generative ranking with text similarity, for the leave-one-out protocol.

The beam returns the items the model ranks highest after a history; a text score returns the items whose titles
resemble the history's. The two signals differ (one is learned from sequences, the other from titles), so each
user's candidates are the union of the beam's items and the ``text_items`` best items of the text score, and every
candidate gets both scores:

- the model's exact log P(item | history): for the beam's items, the score the beam computed (the sum of each
  level's log-probability of the item's token after the history and the item's earlier tokens, which is what
  teacher forcing computes); for the text candidates the beam did not return, by teacher forcing with
  :class:`~recbase.eval.scoring.CandidateScorer`, batched over users;
- its text score: the cosine of the item's title embedding with a recency-weighted profile of the history,
  ``sum_j decay**j * e(h[-1-j])`` (``decay`` 0 keeps the last item only: the text-kNN baseline's score). The
  user's own history items get the lowest score, -1, and are never text candidates (on P5 Beauty no target
  repeats an item of its history).

The fused score of a candidate is ``log P + alpha * text`` (scale ``raw``), or the same sum after each score is
standardised over the user's candidates to mean 0 and standard deviation 1 (scale ``z``). Candidates are ranked
by it, ties to the earlier candidate (beam items first, in beam order, then text candidates best first); a target
outside the union is a miss, as for the beam alone. The decay, scale and alpha are a :class:`Setting`, chosen on
validation targets from a grid: :func:`collect_candidates` takes each model's beam (searched once per split, see
:mod:`recbase.eval.beam_store`) and runs the scorer once per user for every decay of the grid, and
:func:`fused_ranks` ranks any setting of it from those scores without the model.

Several independently trained models rank better together than apart: given several, :func:`collect_candidates`
takes the union of their beams (and the text top) as every user's candidates and gives each candidate the mean of
the models' exact log P, which then fuses with the text score like one model's (an ensemble of one is that model).
"""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass

import numpy as np

from recbase.eval.leave_one_out import Beams, LeaveOneOutSet, history_tokens, ranks_from_scores, user_chunks
from recbase.eval.scoring import CandidateScorer
from recbase.tokenizer.embed import unit_rows
from recbase.vocab import Vocab

SCALES = ("raw", "z")
HISTORY_TEXT_SCORE = -1.0   # text score of the user's own history items: the lowest cosine


@dataclass(frozen=True)
class Setting:
    """One fused ranking: the text profile's decay, the scale of the two scores, and the text score's weight."""

    decay: float
    scale: str
    alpha: float

    @property
    def name(self) -> str:
        return f"decay={self.decay:g} scale={self.scale} alpha={self.alpha:g}"

    @classmethod
    def parse(cls, name: str) -> "Setting":
        fields = dict(part.split("=") for part in name.split())
        return cls(float(fields["decay"]), fields["scale"], float(fields["alpha"]))


def grid(decays: list[float], scales: list[str], alphas: list[float]) -> list[Setting]:
    return [Setting(d, s, a) for d, s, a in itertools.product(decays, scales, alphas)]


@dataclass
class Candidates:
    """Every user's candidates of one split, as rows of padded ``[users, C]`` arrays (padding: row -1).

    Per user, the beam's items come first in beam order (``n_beam`` of them; with several models the union of their
    beams), then the text candidates no beam returned. ``text_top[decay]`` marks the candidates among that decay's
    ``text_items`` best, so one collection serves every decay: a decay's candidate set is the beam's items and its
    own text top.
    """

    rows: np.ndarray                      # [U, C] catalog rows, -1 = padding
    logp: np.ndarray                      # [U, C] exact log P(item | history), float64
    text: dict[float, np.ndarray]         # decay -> [U, C] text score
    text_top: dict[float, np.ndarray]     # decay -> [U, C] bool
    n_beam: np.ndarray                    # [U] beam items (the union of the models' beams)
    seconds: dict[str, float]             # wall time of the beams searched, the text scores and the teacher forcing
    pairs: int                            # (model, user, candidate) scored by teacher forcing: not in its beam
    beam_reused: float                    # search seconds of the beams read back from an earlier pass, not searched

    def candidate_mask(self, decay: float) -> np.ndarray:
        beam = np.arange(self.rows.shape[1])[None, :] < self.n_beam[:, None]
        return beam | self.text_top[decay]


def text_scores(unit_emb: np.ndarray, histories: list[np.ndarray], decay: float) -> np.ndarray:
    """``[users, items]`` cosine of every item with each history's profile; history items score -1."""
    profiles = np.stack([(decay ** np.arange(len(h) - 1, -1, -1, dtype=np.float64)) @ unit_emb[h]
                         for h in histories]).astype(np.float32)
    scores = unit_rows(profiles) @ unit_emb.T
    for i, h in enumerate(histories):
        scores[i, h] = HISTORY_TEXT_SCORE
    return scores


def top_rows(scores: np.ndarray, n: int, exclude: list[np.ndarray]) -> list[np.ndarray]:
    """Per row of ``scores``, the ``n`` best columns not in ``exclude``, best first, ties to the earlier column."""
    out = []
    for s, ex in zip(scores, exclude):
        s = s.copy()
        s[ex] = -np.inf
        k = min(n, len(s) - len(np.unique(ex)))
        part = np.argpartition(-s, k - 1)[:k] if k else np.empty(0, np.int64)
        out.append(part[np.lexsort((part, -s[part]))])
    return out


def collect_candidates(models: list[tuple[Beams, CandidateScorer]], loo: LeaveOneOutSet,
                       item_tokens: np.ndarray, vocab: Vocab, item_ids: list[str], embeddings: np.ndarray,
                       decays: list[float], text_items: int, desc: str = "fuse") -> Candidates:
    """The beams' items and each decay's text top for every user of ``loo``, all scored by every model.

    ``models`` holds one (beams on ``loo``, scorer) pair per model: one model is the fused ranking of that model,
    several are an ensemble. A user's beam items are the union of the models' beams (the first model's in its beam
    order, then each further model's new items in its own order), and a candidate's log P is the mean over the
    models of each one's exact log P: its own beam's score where its beam returned the item, teacher forcing
    otherwise.
    """
    row_of = {item: r for r, item in enumerate(item_ids)}
    unit_emb = unit_rows(np.asarray(embeddings, np.float32))
    histories = history_tokens(loo.histories, item_tokens, vocab)
    rows, logps, n_beam = [], [], []
    tops: dict[float, list[set]] = {d: [] for d in decays}
    texts: dict[float, list[np.ndarray]] = {d: [] for d in decays}
    seconds = {"beam": sum((b.seconds for b, _ in models if not b.reused), 0.0), "text": 0.0, "scoring": 0.0}
    pairs = 0
    for start, stop in user_chunks(len(loo), desc):
        found = [beams.found[start:stop] for beams, _ in models]
        t1 = time.perf_counter()
        chunk_hist = loo.histories[start:stop]
        beam_rows = [[np.array([row_of[i] for i in f.items], np.int64) for f in per_user] for per_user in found]
        chunk_rows = [_union(beams) for beams in zip(*beam_rows)]
        n_beam += [len(r) for r in chunk_rows]
        scores = {}
        for d in decays:
            scores[d] = text_scores(unit_emb, chunk_hist, d)
            best = top_rows(scores[d], text_items, chunk_hist)
            tops[d] += [set(b.tolist()) for b in best]
            chunk_rows = [np.concatenate([r, b[~np.isin(b, r)]]) for r, b in zip(chunk_rows, best)]
        for d in decays:
            texts[d] += [s[r] for s, r in zip(scores[d], chunk_rows)]
        t2 = time.perf_counter()
        total = [np.zeros(len(r)) for r in chunk_rows]
        for (_, scorer), per_user, model_rows in zip(models, found, beam_rows):
            logp, scored = _model_logp(scorer, histories[start:stop], chunk_rows, model_rows,
                                       [np.array(f.scores, np.float64) for f in per_user], item_tokens)
            total = [t + lp for t, lp in zip(total, logp)]
            pairs += scored
        logps += [t / len(models) for t in total]
        rows += chunk_rows
        t3 = time.perf_counter()
        seconds["text"] += t2 - t1
        seconds["scoring"] += t3 - t2
    width = max(len(r) for r in rows)
    return Candidates(
        rows=_padded(rows, width, -1, np.int64), logp=_padded(logps, width, -np.inf, np.float64),
        text={d: _padded(texts[d], width, HISTORY_TEXT_SCORE, np.float32) for d in decays},
        text_top={d: _padded([np.isin(r, list(t)) for r, t in zip(rows, tops[d])], width, False, bool)
                  for d in decays},
        n_beam=np.array(n_beam, np.int64), seconds={k: round(v, 1) for k, v in seconds.items()}, pairs=pairs,
        beam_reused=round(sum((b.seconds for b, _ in models if b.reused), 0.0), 1))


def _union(beams: tuple[np.ndarray, ...]) -> np.ndarray:
    """The items of several beams, each once: the first beam in its order, then each next beam's new items."""
    out = beams[0]
    for b in beams[1:]:
        out = np.concatenate([out, b[~np.isin(b, out)]])
    return out


def _model_logp(scorer: CandidateScorer, histories: list[np.ndarray], rows: list[np.ndarray],
                beam_rows: list[np.ndarray], beam_logp: list[np.ndarray],
                item_tokens: np.ndarray) -> tuple[list[np.ndarray], int]:
    """One model's log P of every user's candidates ``rows``: the score its beam gave the items it returned, teacher
    forcing (batched over users) for the rest; also returns how many (user, candidate) pairs were teacher-forced."""
    out, missing = [], []
    for r, b, s in zip(rows, beam_rows, beam_logp):
        logp = np.full(len(r), np.nan)
        column = {row: c for c, row in enumerate(r.tolist())}
        logp[[column[row] for row in b.tolist()]] = s
        out.append(logp)
        missing.append(np.flatnonzero(np.isnan(logp)))
    todo = [i for i, m in enumerate(missing) if len(m)]
    scored = scorer.score_users([histories[i] for i in todo], [item_tokens[rows[i][missing[i]]] for i in todo])
    for i, s in zip(todo, scored):
        out[i][missing[i]] = s.sum(1)
    return out, sum(len(m) for m in missing)


def _padded(arrays: list[np.ndarray], width: int, fill, dtype) -> np.ndarray:
    out = np.full((len(arrays), width), fill, dtype)
    for i, a in enumerate(arrays):
        out[i, :len(a)] = a
    return out


def _standardised(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``x`` standardised per row over its ``mask``ed entries (a constant row becomes 0)."""
    n = np.maximum(mask.sum(1, keepdims=True), 1)
    mean = np.where(mask, x, 0).sum(1, keepdims=True) / n
    std = np.sqrt(np.where(mask, (x - mean) ** 2, 0).sum(1, keepdims=True) / n)
    return (x - mean) / np.where(std > 0, std, 1)


def fused_scores(cands: Candidates, setting: Setting) -> np.ndarray:
    """``[U, C]`` fused score of every candidate under ``setting``; -inf outside the setting's candidate set."""
    mask = cands.candidate_mask(setting.decay)
    logp, text = np.where(mask, cands.logp, 0.0), cands.text[setting.decay].astype(np.float64)
    if setting.scale == "z":
        logp, text = _standardised(logp, mask), _standardised(text, mask)
    return np.where(mask, logp + setting.alpha * text, -np.inf)


def fused_ranks(cands: Candidates, targets: np.ndarray, setting: Setting) -> np.ndarray:
    """1-based rank of each user's target under ``setting``; inf when it is not among the user's candidates."""
    return _ranks(cands, fused_scores(cands, setting), targets)


def generative_ranks(cands: Candidates, targets: np.ndarray) -> np.ndarray:
    """1-based rank of each user's target among the beam's items by log P alone; inf when no beam returned it.

    For one model this is the beam's own list (it is in descending log P); for an ensemble, the union of the models'
    beams ranked by their mean log P.
    """
    beam = np.arange(cands.rows.shape[1])[None, :] < cands.n_beam[:, None]
    return _ranks(cands, np.where(beam, cands.logp, -np.inf), targets)


def _ranks(cands: Candidates, scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    hit = (cands.rows == np.asarray(targets)[:, None]) & np.isfinite(scores)
    column = hit.argmax(1)
    ranks = ranks_from_scores(scores, column).astype(np.float64)
    ranks[~hit.any(1)] = np.inf
    return ranks
