"""Scoring candidates: log P(candidate's L concept tokens | the user's history tokens).

Fast mode encodes the history once per user and keeps its KV cache. Each candidate becomes a *branch* after the
history: the first L-1 tokens of a batch of candidates are laid out side by side in one query sequence, and a 4D
attention mask lets each branch token see the whole history and the earlier tokens of its own branch only, with
position ids continuing from the history. One forward per candidate batch then yields every candidate's next-token
logits, the history is never copied per candidate, and the cache is cropped back to the history afterwards.
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

MODES = ("fast", "naive")


def truncate_history(history: np.ndarray, levels: int, bos_id: int, max_tokens: int) -> np.ndarray:
    """Keep ``bos`` and the most recent whole items so that the history has at most ``max_tokens`` tokens."""
    history = np.asarray(history, dtype=np.int64)
    if len(history) <= max_tokens:
        return history
    keep_items = (max_tokens - 1) // levels
    if keep_items < 1:
        raise ValueError(f"context of {max_tokens} tokens cannot hold bos and one item of {levels} tokens")
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
    mask = torch.zeros(q, prefix_len + q, dtype=dtype, device=device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[None, None]


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


@torch.no_grad()
def candidate_token_logprobs_fast(model, history: torch.Tensor, candidates: torch.Tensor,
                                  batch_size: int) -> torch.Tensor:
    """Per-token log-probabilities ``[C, L]`` of ``candidates`` ([C, L]) after ``history`` ([T]), history once."""
    encoded = encode_history(model, history)
    n_cand, levels = candidates.shape
    out = torch.empty(n_cand, levels, dtype=torch.float32, device=candidates.device)
    out[:, 0] = torch.log_softmax(encoded.last_logits.float(), -1)[candidates[:, 0]]
    if levels > 1:
        for start in range(0, n_cand, batch_size):
            batch = candidates[start:start + batch_size]
            logp = torch.log_softmax(branch_logits(model, encoded, batch[:, :-1]).float(), -1)
            out[start:start + batch_size, 1:] = logp.gather(-1, batch[:, 1:, None])[..., 0]
    return out


@torch.no_grad()
def candidate_token_logprobs_naive(model, history: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Reference for :func:`candidate_token_logprobs_fast`: one full forward per (history, candidate) pair."""
    n_cand, levels = candidates.shape
    t = history.shape[0]
    out = torch.empty(n_cand, levels, dtype=torch.float32, device=candidates.device)
    for c in range(n_cand):
        seq = torch.cat([history, candidates[c, :-1]])[None]
        logp = torch.log_softmax(model(input_ids=seq).logits[0, t - 1:].float(), -1)
        out[c] = logp.gather(-1, candidates[c, :, None])[:, 0]
    return out


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

    ``score_user`` returns the per-token log-probabilities ``[C, L]``; the candidate score is their sum
    (log P of the item) and the length-normalised score their mean (log P per token).
    """

    def __init__(self, model, levels: int, bos_id: int, mode: str = "fast", batch_size: int = 256,
                 max_context: int | None = None):
        if mode not in MODES:
            raise ValueError(f"scoring mode {mode!r} is not one of {MODES}")
        self.model = model
        self.levels = levels
        self.bos_id = bos_id
        self.mode = mode
        self.batch_size = batch_size
        context = max_context or int(model.config.max_position_embeddings)
        # The last candidate token is never an input: history + L-1 tokens must fit the context.
        self.max_history_tokens = context - (levels - 1)
        self.device = next(model.parameters()).device
        self.timing = ScoreTiming()

    def score_user(self, history: np.ndarray, candidate_tokens: np.ndarray) -> np.ndarray:
        """Per-token log-probabilities ``[C, L]`` (float64) of each candidate after ``history``."""
        candidate_tokens = np.asarray(candidate_tokens, dtype=np.int64)
        if candidate_tokens.ndim != 2 or candidate_tokens.shape[1] != self.levels:
            raise ValueError(f"candidate tokens have shape {candidate_tokens.shape}, expected [C, {self.levels}]")
        hist = truncate_history(history, self.levels, self.bos_id, self.max_history_tokens)
        h = torch.as_tensor(hist, device=self.device)
        c = torch.as_tensor(candidate_tokens, device=self.device)
        t0 = time.perf_counter()
        if self.mode == "fast":
            logp = candidate_token_logprobs_fast(self.model, h, c, self.batch_size)
        else:
            logp = candidate_token_logprobs_naive(self.model, h, c)
        result = logp.double().cpu().numpy()
        self.timing.seconds += time.perf_counter() - t0
        self.timing.pairs += len(candidate_tokens)
        self.timing.users += 1
        return result
