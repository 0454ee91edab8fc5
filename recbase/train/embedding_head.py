"""The next-item text-embedding head: from the hidden state at the last token of item t, a direction in the
text-embedding space (centred on the domain's catalog, unit length) where item t+1 should lie.

Why: a concept-ID model pretrained on other domains ranks a new catalog at random, while the cosine of a
candidate's centred text embedding with the history's mean clears 0.6-0.75 AUC on every unseen domain. The head is
residual on that bar: it starts at the mean of the history items' unit vectors (:class:`EmbeddingHead` has two
ways to move away from it), so an untrained head ranks exactly like the bar (over the latest
:data:`HISTORY_WINDOW` items) and training can only move it where the sequences of many domains agree.

Targets without a new shard format: an item's vector is the tokenizer's reconstruction of it from its L concept
tokens (:meth:`recbase.tokenizer.artifact.Tokenizer.reconstruct`, in the tokenizer's per-domain centred input
space), re-normalised. At evaluation the history mean and the candidates use the items' real centred embeddings,
the bar's own vectors, of which the reconstructions are the quantised approximation.

No leak: the prediction after item t sees the hidden state at item t's last token (causal attention: tokens of items
1..t only) and the vectors of items 1..t; item t+1 enters only as the target.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from recbase.errors import UserError
from recbase.vocab import Vocab

LOSSES = ("cosine", "contrastive")
STATE_PREFIX = "embedding_head."   # parameter names of the head beside the language model's ``lm.``


KINDS = ("linear", "attention", "features")
RECENCY_BUCKETS = 16   # the attention head's learned bias per item distance from the end (0..15, 15 = older)
# The latest items the head looks at, in training, scoring and the recency fit (recbase.train.head_recency) alike:
# the oldest bucket's bias weighs every item from 15 back, so without one window a history of 500 items (MovieLens)
# would put far more weight on its old items than the fit over 50 ever saw.
HISTORY_WINDOW = 50
FEATURES = ("cosine with the latest item", "cosine with the history mean", "position (1 latest, -1 first)")
FEATURE_KNOTS = 9      # each feature's learned function is linear between its values at 9 even points of [-1, 1]


def history_features(vectors: torch.Tensor, allowed: torch.Tensor, distance: torch.Tensor) -> torch.Tensor:
    """``[N, M, 3]`` float32: for prediction ``n`` and history item ``m`` the :data:`FEATURES`, each in [-1, 1].

    Why these: a new catalog has nothing the training catalogs named, but every history has a latest item, a mean
    and an order. How close an item is to the latest one and to the user's usual interest (the mean of the items'
    unit vectors, the text bar's profile) says how much it should count, whatever the domain. Training (the
    tokenizer's reconstructions) and scoring (the real centred embeddings) both reach the features only through
    this function, with the history laid out as :class:`EmbeddingHead` takes it. Entries outside ``allowed`` are
    finite and meaningless.
    """
    unit = F.normalize(vectors.float(), dim=-1)
    mask = allowed.float()
    latest = ((distance == 0) & allowed).float() @ unit
    mean = F.normalize(mask @ unit, dim=-1)
    last_index = (mask.sum(1, keepdim=True) - 1).clamp_min(1)
    position = 1 - 2 * distance.float() / last_index
    return torch.stack([latest @ unit.T, mean @ unit.T, position], dim=-1).clamp(-1, 1)


def piecewise_linear(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``[..., F]`` → ``[...]``: the sum over features ``f`` of the function with ``values[f]`` at
    :data:`FEATURE_KNOTS` even points of [-1, 1], linear between them, at ``x[..., f]``."""
    knots = values.shape[1]
    t = (x.clamp(-1, 1) + 1) * (knots - 1) / 2
    low = t.floor().clamp(0, knots - 2).long()
    frac = (t - low).to(values.dtype)
    feature = torch.arange(values.shape[0], device=x.device)
    return (values[feature, low] * (1 - frac) + values[feature, low + 1] * frac).sum(-1)


class EmbeddingHead(nn.Module):
    """A unit prediction from the hidden state ``hidden`` at the last history token and the history items' unit
    vectors; both kinds start exactly at the text bar's profile (the mean of the history's vectors).

    - ``linear``: ``unit(mean + proj(hidden))``, ``proj`` zero-initialised: a correction anywhere in the space.
    - ``attention``: ``unit(sum_i a_i v_i)``, ``a = softmax(q(hidden) . k(v_i) + recency[distance_i])`` with ``q``
      and the recency biases zero-initialised: it can only re-weight the user's own items, so it cannot learn a
      direction of a training catalog, only which of a user's items the next one follows.
    - ``features``: ``attention`` plus, in the logits, a learned function of each item's
      :func:`history_features` (zero-initialised), so the weights can follow what every catalog has.

    The history of prediction ``n`` is given as the rows ``m`` of ``vectors`` with ``allowed[n, m]``, each
    ``distance[n, m]`` items before the latest (0 = the latest item itself); only the latest
    :data:`HISTORY_WINDOW` count.
    """

    def __init__(self, hidden_size: int, dim: int, kind: str = "linear", key_dim: int = 32):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"embedding head kind {kind!r} is not one of {KINDS}")
        self.kind = kind
        self.dim = dim
        self.proj = nn.Linear(hidden_size, dim if kind == "linear" else key_dim, bias=False)
        with torch.no_grad():
            self.proj.weight.zero_()
        if kind != "linear":
            self.key = nn.Linear(dim, key_dim, bias=False)
            self.recency = nn.Parameter(torch.zeros(RECENCY_BUCKETS))
        if kind == "features":
            self.features = nn.Parameter(torch.zeros(len(FEATURES), FEATURE_KNOTS))

    def forward(self, hidden: torch.Tensor, vectors: torch.Tensor, allowed: torch.Tensor,
                distance: torch.Tensor) -> torch.Tensor:
        weight = self.proj.weight
        hidden, vectors = hidden.to(weight.dtype), vectors.to(weight.dtype)
        allowed = allowed & (distance < HISTORY_WINDOW)
        if self.kind == "linear":
            counts = allowed.sum(1, keepdim=True).clamp_min(1).to(weight.dtype)
            mean = (allowed.to(weight.dtype) @ vectors) / counts
            return F.normalize((mean + self.proj(hidden)).float(), dim=-1)
        logits = self.proj(hidden) @ self.key(vectors).T / self.proj.out_features ** 0.5
        logits = logits + self.recency[distance.clamp(0, RECENCY_BUCKETS - 1)]
        if self.kind == "features":
            logits = logits + piecewise_linear(self.features, history_features(vectors, allowed, distance))
        weights = torch.softmax(logits.masked_fill(~allowed, float("-inf")), dim=-1).nan_to_num(0.0)
        return F.normalize((weights @ vectors).float(), dim=-1)


def state_kind(state: dict[str, torch.Tensor]) -> str:
    """The head kind a saved state dict belongs to."""
    return "features" if "features" in state else "attention" if "recency" in state else "linear"


class ItemVectors:
    """Unit vectors of items from their concept tokens: the tokenizer's reconstruction, re-normalised.

    Not a module: the tokenizer is frozen and must stay out of the optimizer and out of ZeRO's partitioning.
    """

    def __init__(self, tokenizer, vocab: Vocab):
        if tokenizer.levels != vocab.levels or tokenizer.codebook_size != vocab.codebook_size:
            raise UserError(f"the tokenizer has {tokenizer.levels} x {tokenizer.codebook_size} codes, the shards "
                            f"{vocab.levels} x {vocab.codebook_size}")
        self.tokenizer = tokenizer
        self.offsets = vocab.n_special + torch.arange(vocab.levels) * vocab.codebook_size
        self.dim = tokenizer.input_dim

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[N, L]`` concept tokens → ``[N, D]`` float32 unit vectors on the tokens' device."""
        codes = (tokens.cpu() - self.offsets).numpy()
        vectors = torch.from_numpy(np.ascontiguousarray(self.tokenizer.reconstruct(codes), dtype=np.float32))
        return F.normalize(vectors, dim=-1).to(tokens.device)


def item_ends(input_ids: torch.Tensor, segments: torch.Tensor, vocab: Vocab) -> torch.Tensor:
    """Flat indices (into ``input_ids.view(-1)``) of the last token of every complete item.

    An item is complete when its L tokens are of levels 0..L-1 in order inside one segment. Token ids carry their
    level, so this also holds in a chunk cut from the middle of a long user (its first, partial item is skipped).
    """
    flat = input_ids.reshape(-1)
    seg = segments.reshape(-1)
    levels = vocab.levels
    concept = (flat >= vocab.n_special) & (flat < vocab.n_tokens)
    level = torch.where(concept, torch.div(flat - vocab.n_special, vocab.codebook_size, rounding_mode="floor"),
                        torch.full_like(flat, -1))
    ok = level == levels - 1
    for back in range(1, levels):
        prev_level = torch.cat([torch.full((back,), -1, dtype=level.dtype, device=level.device), level])[:len(level)]
        prev_seg = torch.cat([torch.full((back,), -1, dtype=seg.dtype, device=seg.device), seg])[:len(seg)]
        ok &= (prev_level == levels - 1 - back) & (prev_seg == seg)
    return ok.nonzero()[:, 0]


def next_item_targets(input_ids: torch.Tensor, labels: torch.Tensor, segments: torch.Tensor, vocab: Vocab,
                      item_vectors: ItemVectors) -> dict[str, torch.Tensor]:
    """Where the head predicts and what: ``positions`` (flat index of item t's last token), ``target`` (item t+1's
    vector), ``group`` (segment id), and the history of each prediction as :class:`EmbeddingHead` takes it:
    ``vectors`` (every complete item's vector), ``allowed`` (the items 1..t of the same segment) and
    ``distance`` (t minus the item's index).

    Item t+1 must end L tokens later in the same segment with a label there (the valid split leaves a user's
    earlier items unlabelled, so only its held-out items are predicted).
    """
    levels = vocab.levels
    ends = item_ends(input_ids, segments, vocab)
    tokens = input_ids.reshape(-1)[ends[:, None] - torch.arange(levels - 1, -1, -1, device=ends.device)]
    vectors = item_vectors(tokens)
    seg = segments.reshape(-1)[ends]
    has_next = torch.zeros(len(ends), dtype=torch.bool, device=ends.device)
    if len(ends) > 1:
        has_next[:-1] = (ends[1:] == ends[:-1] + levels) & (seg[1:] == seg[:-1])
    labelled = labels.reshape(-1)[(ends + levels).clamp_max(labels.numel() - 1)] != -100
    nxt = (has_next & labelled).nonzero()[:, 0]
    index = torch.arange(len(ends), device=ends.device)
    distance = nxt[:, None] - index[None, :]
    allowed = (seg[nxt][:, None] == seg[None, :]) & (distance >= 0)
    return {"positions": ends[nxt], "target": vectors[nxt + 1], "group": seg[nxt], "vectors": vectors,
            "allowed": allowed, "distance": distance}


def embedding_loss(pred: torch.Tensor, target: torch.Tensor, group: torch.Tensor, kind: str,
                   temperature: float = 0.1) -> torch.Tensor:
    """Summed loss of unit predictions against unit targets.

    ``cosine``: 1 - cos per prediction. ``contrastive``: softmax cross-entropy of the true next item against the
    other targets of the same user (``group``), so negatives always come from the same domain: negatives from
    other domains would teach the head to tell domains apart, which is useless on a new one. A prediction whose
    user has no other target has no negative and adds nothing.
    """
    if kind == "cosine":
        return (1.0 - (pred * target).sum(-1)).sum()
    if kind != "contrastive":
        raise ValueError(f"embedding loss {kind!r} is not one of {LOSSES}")
    logits = pred @ target.T / temperature
    same = group[:, None] == group[None, :]
    logits = logits.masked_fill(~same, float("-inf"))
    has_negative = same.sum(1) > 1
    idx = torch.arange(len(pred), device=pred.device)
    return F.cross_entropy(logits[has_negative], idx[has_negative], reduction="sum")
