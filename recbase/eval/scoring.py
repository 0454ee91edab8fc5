"""Scoring candidates: log P(candidate's L concept tokens | the user's history tokens).

Fast mode never runs a history more than once per user, in one of two layouts:

- *batched* (users whose history plus candidate branches fit ``batch_tokens``): each user is one row, its
  history followed by one branch per candidate (the candidate's first L-1 tokens); a per-row 4D attention mask
  lets a history token see its history causally and a branch token see the history and its own branch only,
  and position ids continue the history in every branch. Users are sorted by length so rows pad little. One
  forward scores every candidate of every user in the batch; the LM head runs only at the positions that predict
  a candidate token. This is what makes eval sets with few candidates per user fast.
- *cached* (longer users): the history runs once with its KV cache kept; batches of candidates are branches in
  one query sequence under the same kind of mask, and the cache is cropped back to the history after each batch,
  so the history is never copied per candidate.

Naive mode runs one full forward over history + candidate per pair; it exists to verify fast mode.

Histories longer than the model's context are cut from the left by whole items; ``bos`` stays at position 0
because every training sequence starts with it (the model has never seen a history start mid-item or without it).
"""
from __future__ import annotations

import inspect
import time
from dataclasses import dataclass

import numpy as np
import torch

from recbase.errors import UserError

MODES = ("fast", "naive")
# A batched row's attention mask grows with the square of its length; longer users take the cached layout,
# whose mask grows only with history length × candidate batch.
MAX_BATCHED_ROW = 2048


def truncate_history(history: np.ndarray, levels: int, bos_id: int, max_tokens: int) -> np.ndarray:
    """Keep ``bos`` and the most recent whole items so that the history has at most ``max_tokens`` tokens."""
    history = np.asarray(history, dtype=np.int64)
    if len(history) <= max_tokens:
        return history
    keep_items = (max_tokens - 1) // levels
    if keep_items < 1:
        raise UserError(f"context of {max_tokens} tokens cannot hold bos and one item of {levels} tokens")
    return np.concatenate([[bos_id], history[len(history) - keep_items * levels:]])


def _cache_kwarg(model) -> str:
    """Name of the forward argument carrying the KV cache (``cache`` in recent transformers)."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


@dataclass
class EncodedHistory:
    """A user's history run through the model once: its KV cache, length and next-token logits."""

    cache: object
    length: int
    last_logits: torch.Tensor  # [V], predicts the first token after the history


@torch.no_grad()
def encode_history(model, history: torch.Tensor) -> EncodedHistory:
    """Run ``history`` ([T] token ids) through ``model`` and keep the cache for branching."""
    # Only the last position's logits are needed: skip the LM head over the rest of the history.
    out = model(input_ids=history[None], use_cache=True, logits_to_keep=1)
    cache = out.cache if "cache" in out else out.past_key_values
    return EncodedHistory(cache=cache, length=int(history.shape[0]), last_logits=out.logits[0, -1])


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """0 where attention is allowed, the dtype's minimum elsewhere (what eager and SDPA attention both add)."""
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min)


def branch_mask(n_branches: int, branch_len: int, prefix_len: int, dtype: torch.dtype,
                device: torch.device) -> torch.Tensor:
    """Additive 4D mask ``[1, 1, Q, prefix_len + Q]`` for ``Q = n_branches * branch_len`` branch tokens.

    A branch token attends to the whole prefix, and within the branch tokens to its own branch up to itself.
    """
    q = n_branches * branch_len
    branch = torch.arange(q, device=device) // branch_len
    pos = torch.arange(q, device=device) % branch_len
    allowed = torch.ones(q, prefix_len + q, dtype=torch.bool, device=device)
    allowed[:, prefix_len:] = (branch[:, None] == branch[None, :]) & (pos[None, :] <= pos[:, None])
    return additive_mask(allowed, dtype)[None, None]


@torch.no_grad()
def branch_logits(model, encoded: EncodedHistory, branches: torch.Tensor) -> torch.Tensor:
    """Logits ``[B, n, V]`` after each token of ``B`` branches of ``n`` tokens that all continue the history."""
    n_branches, branch_len = branches.shape
    dtype = next(model.parameters()).dtype
    mask = branch_mask(n_branches, branch_len, encoded.length, dtype, branches.device)
    positions = encoded.length + torch.arange(branch_len, device=branches.device).repeat(n_branches)
    kwargs = {_cache_kwarg(model): encoded.cache}
    try:
        logits = model(input_ids=branches.reshape(1, -1), attention_mask=mask, position_ids=positions[None],
                       use_cache=True, **kwargs).logits
    finally:
        encoded.cache.crop(-(n_branches * branch_len))
    return logits.view(n_branches, branch_len, -1)


def level_logprobs(logits: torch.Tensor, tokens: torch.Tensor, allowed=None) -> torch.Tensor:
    """Log-probabilities ``[P, L]`` of ``tokens`` ([P, L]) under the next-token ``logits`` ([P, L, V]) that predict
    them. With ``allowed`` (a function of ``tokens`` and V giving a boolean ``[P, L, V]`` mask of the tokens each
    level may take), ``[P, L, 2]``: those and the log of the probability mass on the allowed tokens, so that their
    difference is the log-probability renormalised over the allowed tokens alone."""
    logp = torch.log_softmax(logits.float(), -1)
    picked = logp.gather(-1, tokens[..., None])[..., 0]
    if allowed is None:
        return picked
    mass = logp.masked_fill(~allowed(tokens, logp.shape[-1]), float("-inf")).logsumexp(-1)
    return torch.stack([picked, mass], -1)


@torch.no_grad()
def candidate_token_logprobs_fast(model, history: torch.Tensor, candidates: torch.Tensor,
                                  batch_size: int, allowed=None) -> torch.Tensor:
    """Per-token log-probabilities ``[C, L]`` of ``candidates`` ([C, L]) after ``history`` ([T]), history once
    (``[C, L, 2]`` with ``allowed``, as :func:`level_logprobs`)."""
    encoded = encode_history(model, history)
    out = []
    for start in range(0, candidates.shape[0], batch_size):
        batch = candidates[start:start + batch_size]
        logits = encoded.last_logits.expand(len(batch), 1, -1)
        if batch.shape[1] > 1:
            logits = torch.cat([logits, branch_logits(model, encoded, batch[:, :-1])], 1)
        out.append(level_logprobs(logits, batch, allowed))
    return torch.cat(out)


def user_layout(history: torch.Tensor, candidates: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """One user's row: the history, then one branch per candidate (its first L-1 tokens).

    Returns tokens, position ids (branches continue the history), branch id per token (-1 on the history) and
    ``predictors`` ``[C, L]``: the row index whose logits predict each candidate token (the last history token for
    level 0, else the previous token of the candidate's branch).
    """
    device = history.device
    t = history.shape[0]
    n_cand, levels = candidates.shape
    width = levels - 1
    tokens = torch.cat([history, candidates[:, :width].reshape(-1)])
    positions = torch.cat([torch.arange(t, device=device), t + torch.arange(width, device=device).repeat(n_cand)])
    branch = torch.cat([torch.full((t,), -1, device=device),
                        torch.arange(n_cand, device=device).repeat_interleave(width)])
    first = t + width * torch.arange(n_cand, device=device)
    predictors = torch.cat([torch.full((n_cand, 1), t - 1, device=device),
                            first[:, None] + torch.arange(width, device=device)], dim=1)
    return tokens, positions, branch, predictors


def batched_layout(histories: list[torch.Tensor], candidates: list[torch.Tensor], pad_id: int) -> dict:
    """Users as rows of one batch, right-padded to the longest, with a per-row 4D attention permission.

    A history token sees its history causally; a branch token sees the history and its own branch up to itself;
    a padding token sees only itself (so no softmax row is empty) and nothing sees padding.
    """
    rows = [user_layout(h, c) for h, c in zip(histories, candidates)]
    device = histories[0].device
    n = max(len(r[0]) for r in rows)
    b = len(rows)
    tokens = torch.full((b, n), pad_id, dtype=torch.int64, device=device)
    positions = torch.zeros((b, n), dtype=torch.int64, device=device)
    branch = torch.full((b, n), -2, dtype=torch.int64, device=device)   # -2 marks padding
    for i, (tok, pos, br, _) in enumerate(rows):
        tokens[i, :len(tok)], positions[i, :len(tok)], branch[i, :len(tok)] = tok, pos, br
    valid = branch != -2
    allowed = (valid[:, None, :] & valid[:, :, None] & (positions[:, None, :] <= positions[:, :, None])
               & ((branch[:, None, :] == -1) | (branch[:, None, :] == branch[:, :, None])))
    allowed |= torch.eye(n, dtype=torch.bool, device=device)[None] & ~valid[:, :, None]
    row_of_pair = torch.cat([torch.full((len(c),), i, device=device) for i, c in enumerate(candidates)])
    predictors = torch.cat([r[3] for r in rows])
    return {"tokens": tokens, "positions": positions, "allowed": allowed, "row_of_pair": row_of_pair,
            "predictors": predictors}


@torch.no_grad()
def candidate_token_logprobs_batched(model, histories: list[torch.Tensor], candidates: list[torch.Tensor],
                                     pad_id: int = 0, allowed=None) -> list[torch.Tensor]:
    """Per-token log-probabilities ``[C_u, L]`` for every user, the users as rows of one forward (``[C_u, L, 2]``
    with ``allowed``, as :func:`level_logprobs`).

    The LM head runs only at the positions that predict a candidate token.
    """
    layout = batched_layout(histories, candidates, pad_id)
    mask = additive_mask(layout["allowed"], next(model.parameters()).dtype)
    hidden = model.base_model(input_ids=layout["tokens"], position_ids=layout["positions"],
                              attention_mask=mask[:, None]).last_hidden_state
    levels = layout["predictors"].shape[1]
    rows = layout["row_of_pair"][:, None].expand(-1, levels)
    logits = model.get_output_embeddings()(hidden[rows, layout["predictors"]])   # [P, L, V]
    pair_logp = level_logprobs(logits, torch.cat(candidates), allowed)
    return list(torch.split(pair_logp, [len(c) for c in candidates]))


@torch.no_grad()
def candidate_token_logprobs_naive(model, history: torch.Tensor, candidates: torch.Tensor,
                                   allowed=None) -> torch.Tensor:
    """Reference for :func:`candidate_token_logprobs_fast`: one full forward per (history, candidate) pair."""
    t = history.shape[0]
    out = []
    for c in range(candidates.shape[0]):
        seq = torch.cat([history, candidates[c, :-1]])[None]
        out.append(level_logprobs(model(input_ids=seq).logits[:, t - 1:], candidates[c:c + 1], allowed))
    return torch.cat(out)


@dataclass
class ScoreTiming:
    """Throughput of a scoring run."""

    pairs: int = 0
    users: int = 0
    seconds: float = 0.0

    @property
    def pairs_per_s(self) -> float:
        return self.pairs / self.seconds if self.seconds > 0 else float("nan")

    def to_dict(self) -> dict:
        return {"pairs": self.pairs, "users": self.users, "seconds": self.seconds, "pairs_per_s": self.pairs_per_s}


class CandidateScorer:
    """Scores users' candidates with a causal LM over concept tokens.

    ``score_users`` returns per user the per-token log-probabilities ``[C, L]``; the candidate score is their sum
    (log P of the item) and the length-normalised score their mean (log P per token).
    """

    def __init__(self, model, levels: int, bos_id: int, mode: str = "fast", batch_size: int = 256,
                 batch_tokens: int = 8192, pad_id: int = 0, max_context: int | None = None):
        if mode not in MODES:
            raise UserError(f"scoring mode {mode!r} is not one of {MODES}")
        self.model = model
        self.levels = levels
        self.bos_id = bos_id
        self.mode = mode
        self.batch_size = batch_size
        self.batch_tokens = batch_tokens
        self.max_row = min(batch_tokens, MAX_BATCHED_ROW)
        self.pad_id = pad_id
        context = max_context or int(model.config.max_position_embeddings)
        # The last candidate token is never an input: history + L-1 tokens must fit the context.
        self.max_history_tokens = context - (levels - 1)
        self.device = next(model.parameters()).device
        self.timing = ScoreTiming()

    def _prepare(self, history: np.ndarray, candidate_tokens: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        candidate_tokens = np.asarray(candidate_tokens, dtype=np.int64)
        if candidate_tokens.ndim != 2 or candidate_tokens.shape[1] != self.levels:
            raise ValueError(f"candidate tokens have shape {candidate_tokens.shape}, expected [C, {self.levels}]")
        hist = truncate_history(history, self.levels, self.bos_id, self.max_history_tokens)
        return torch.as_tensor(hist, device=self.device), torch.as_tensor(candidate_tokens, device=self.device)

    def _length(self, user: tuple[torch.Tensor, torch.Tensor]) -> int:
        return len(user[0]) + user[1].shape[0] * (self.levels - 1)

    def _batches(self, users: list[tuple[torch.Tensor, torch.Tensor]]) -> list[list[int]]:
        """Users sorted by length and grouped so that a group's padded size (rows × longest row) stays within
        ``batch_tokens``; a user longer than ``max_row`` is a group of its own (scored with the cached layout)."""
        groups: list[list[int]] = []
        longest = 0
        for i in sorted(range(len(users)), key=lambda i: self._length(users[i])):
            length = self._length(users[i])
            if (not groups or length > self.max_row
                    or (len(groups[-1]) + 1) * max(longest, length) > self.batch_tokens):
                groups.append([])
                longest = 0
            groups[-1].append(i)
            longest = max(longest, length)
        return groups

    def score_users(self, histories: list[np.ndarray], candidate_tokens: list[np.ndarray],
                    allowed=None) -> list[np.ndarray]:
        """Per user, per-token log-probabilities ``[C, L]`` (float64) of each candidate after the history.

        With ``allowed`` (tokens ``[P, L]`` and the vocabulary width -> boolean ``[P, L, V]``, e.g.
        :class:`recbase.eval.calibrate.CatalogTokens`), ``[C, L, 2]``: ``[..., 1]`` is the log of the probability
        mass the model puts on the allowed tokens at each level (:func:`level_logprobs`)."""
        users = [self._prepare(h, c) for h, c in zip(histories, candidate_tokens)]
        t0 = time.perf_counter()
        if self.mode == "naive":
            out = [candidate_token_logprobs_naive(self.model, h, c, allowed) for h, c in users]
        else:
            out = [None] * len(users)
            for group in self._batches(users):
                h, c = users[group[0]]
                if len(group) == 1 and self._length(users[group[0]]) > self.max_row:
                    out[group[0]] = candidate_token_logprobs_fast(self.model, h, c, self.batch_size, allowed)
                    continue
                scored = candidate_token_logprobs_batched(self.model, [users[i][0] for i in group],
                                                          [users[i][1] for i in group], self.pad_id, allowed)
                for i, logp in zip(group, scored):
                    out[i] = logp
        result = [logp.double().cpu().numpy() for logp in out]
        self.timing.seconds += time.perf_counter() - t0
        self.timing.pairs += sum(len(c) for _, c in users)
        self.timing.users += len(users)
        return result

    def score_user(self, history: np.ndarray, candidate_tokens: np.ndarray, allowed=None) -> np.ndarray:
        """:meth:`score_users` for one user."""
        return self.score_users([history], [candidate_tokens], allowed)[0]
