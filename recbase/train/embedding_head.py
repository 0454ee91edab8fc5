"""The next-item text-embedding head: from the hidden state at the last token of item t, a direction in the
text-embedding space (centred on the domain's catalog, unit length) where item t+1 should lie.

Why: a concept-ID model pretrained on other domains ranks a new catalog at random, while the cosine of a
candidate's centred text embedding with the history's mean clears 0.6-0.75 AUC on every unseen domain. The head is
residual on that bar: its prediction is the mean of the history items' unit vectors plus a learned correction
(a zero-initialised linear map of the hidden state), so an untrained head ranks exactly like the bar and training
can only move it where the sequences of many domains agree.

Targets without a new shard format: an item's vector is the tokenizer's reconstruction of it from its L concept
tokens (:meth:`recbase.tokenizer.artifact.Tokenizer.reconstruct`, in the tokenizer's per-domain centred input
space), re-normalised. At evaluation the history mean and the candidates use the items' real centred embeddings,
the bar's own vectors, of which the reconstructions are the quantised approximation.

No leak: the prediction after item t sees the hidden state at item t's last token (causal attention: tokens of items
1..t only) and the mean of items 1..t; item t+1 enters only as the target.
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


class EmbeddingHead(nn.Module):
    """``unit(history_mean + proj(hidden))``; ``proj`` starts at zero, so the head starts as the text bar."""

    def __init__(self, hidden_size: int, dim: int):
        super().__init__()
        self.proj = nn.Linear(hidden_size, dim, bias=False)
        with torch.no_grad():
            self.proj.weight.zero_()

    @property
    def dim(self) -> int:
        return self.proj.out_features

    def forward(self, hidden: torch.Tensor, history_mean: torch.Tensor) -> torch.Tensor:
        correction = self.proj(hidden.to(self.proj.weight.dtype)).float()
        return F.normalize(history_mean.float() + correction, dim=-1)


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
        prev_level = torch.cat([torch.full((back,), -1, dtype=level.dtype, device=level.device), level[:-back]])
        prev_seg = torch.cat([torch.full((back,), -1, dtype=seg.dtype, device=seg.device), seg[:-back]])
        ok &= (prev_level == levels - 1 - back) & (prev_seg == seg)
    return ok.nonzero()[:, 0]


def running_means(vectors: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Row ``i``: the mean of rows ``j <= i`` of ``vectors`` with ``groups[j] == groups[i]`` (groups sorted)."""
    total = vectors.cumsum(0)
    first = torch.searchsorted(groups, groups)                    # first row of each row's group
    before = torch.where((first > 0)[:, None], total[(first - 1).clamp_min(0)], torch.zeros_like(total))
    count = (torch.arange(len(groups), device=groups.device) - first + 1).to(vectors.dtype)
    return (total - before) / count[:, None]


def next_item_targets(input_ids: torch.Tensor, labels: torch.Tensor, segments: torch.Tensor, vocab: Vocab,
                      item_vectors: ItemVectors) -> dict[str, torch.Tensor]:
    """Where the head predicts and what: ``positions`` (flat index of item t's last token), ``history_mean``
    (mean vector of the segment's items up to t), ``target`` (item t+1's vector) and ``group`` (segment id).

    Item t+1 must end L tokens later in the same segment with a label there (the valid split leaves a user's
    earlier items unlabelled, so only its held-out items are predicted).
    """
    levels = vocab.levels
    ends = item_ends(input_ids, segments, vocab)
    tokens = input_ids.reshape(-1)[ends[:, None] - torch.arange(levels - 1, -1, -1, device=ends.device)]
    vectors = item_vectors(tokens)
    seg = segments.reshape(-1)[ends]
    means = running_means(vectors, seg)
    has_next = torch.zeros(len(ends), dtype=torch.bool, device=ends.device)
    if len(ends) > 1:
        has_next[:-1] = (ends[1:] == ends[:-1] + levels) & (seg[1:] == seg[:-1])
    labelled = labels.reshape(-1)[(ends + levels).clamp_max(labels.numel() - 1)] != -100
    keep = has_next & labelled
    nxt = keep.nonzero()[:, 0]
    return {"positions": ends[nxt], "history_mean": means[nxt], "target": vectors[nxt + 1], "group": seg[nxt]}


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
