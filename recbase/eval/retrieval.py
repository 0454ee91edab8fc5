"""Catalog-aware retrieval: beam search over concept tokens, constrained to the catalog's code tuples.

The history is encoded once (its KV cache kept); at each level the live beams are branches after the history
(see :mod:`recbase.eval.scoring`), the trie lists every valid next code of every beam in one vectorised step, and
the best ``beam_width`` extensions survive. The result is real items only: each surviving tuple maps to its
catalog items, which share the tuple's score when codes collide.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from recbase.eval.scoring import branch_logits, encode_history, truncate_history
from recbase.eval.trie import CodeTrie


@dataclass
class Retrieved:
    """Ranked items of one user: ``items[i]`` has score ``scores[i]`` (log P of its code tuple)."""

    items: list[str]
    scores: list[float]

    def rank_of(self, item_id: str) -> float:
        """1-based rank of ``item_id``, ``inf`` when it was not retrieved."""
        try:
            return float(self.items.index(item_id) + 1)
        except ValueError:
            return float("inf")


@torch.no_grad()
def beam_search(model, history: torch.Tensor, trie: CodeTrie, n_special: int,
                beam_width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Best ``beam_width`` complete tuples after ``history``: (tuple indices, log P), best first."""
    k = trie.codebook_size
    encoded = encode_history(model, history)
    device = history.device
    beams = torch.zeros(1, dtype=torch.int64, device=device)      # prefix indices at the current depth
    beam_scores = torch.zeros(1, dtype=torch.float32, device=device)
    beam_tokens = torch.zeros(1, 0, dtype=torch.int64, device=device)
    for depth in range(trie.levels):
        if depth == 0:
            logp = torch.log_softmax(encoded.last_logits.float(), -1)[None]
        else:
            logp = torch.log_softmax(branch_logits(model, encoded, beam_tokens)[:, -1].float(), -1)
        parent, child = trie.expand(depth, beams)
        tokens = n_special + depth * k + trie.child_code[depth][child]
        scores = beam_scores[parent] + logp[parent, tokens]
        top = torch.topk(scores, min(beam_width, len(scores)))
        beams = child[top.indices]
        beam_scores = top.values
        beam_tokens = torch.cat([beam_tokens[parent[top.indices]], tokens[top.indices, None]], dim=1)
    return beams, beam_scores


class Retriever:
    """Leave-one-out retrieval over one domain's catalog."""

    def __init__(self, model, trie: CodeTrie, n_special: int, bos_id: int, beam_width: int = 20,
                 max_context: int | None = None):
        if beam_width < 1:
            raise ValueError("beam_width must be at least 1")
        self.model = model
        self.trie = trie
        self.n_special = n_special
        self.bos_id = bos_id
        self.beam_width = beam_width
        context = max_context or int(model.config.max_position_embeddings)
        self.max_history_tokens = context - (trie.levels - 1)
        self.device = next(model.parameters()).device

    def retrieve(self, history: np.ndarray) -> Retrieved:
        hist = truncate_history(history, self.trie.levels, self.bos_id, self.max_history_tokens)
        h = torch.as_tensor(hist, device=self.device)
        tuples, scores = beam_search(self.model, h, self.trie, self.n_special, self.beam_width)
        items, item_scores = [], []
        for t, s in zip(tuples.tolist(), scores.tolist()):
            for item in self.trie.items_of(t):
                items.append(item)
                item_scores.append(s)
        return Retrieved(items, item_scores)
