"""Catalog-aware retrieval: beam search over concept tokens, constrained to the catalog's code tuples.

The history is encoded once (its KV cache kept); at each level the live beams are branches after the history
(see :mod:`recbase.eval.scoring`), the trie lists every valid next code of every beam in one vectorised step, and
the best ``beam_width`` extensions survive. The result is real items only: each surviving tuple maps to its
catalog items, which share the tuple's score when codes collide.

:meth:`Retriever.retrieve_batch` runs many users at once, because a tiny model on one user is bound by the
per-forward overhead, not by arithmetic. The users' histories are left-padded into one forward (a 4D mask keeps
padding out of every softmax and position ids restart at 0 on each real history), so the next-token logits of all
users are in the last column and the one KV cache holds every user's history. Each level then appends one token
per beam of every user to that cache in one forward, and a beam attends to its user's history and its own
ancestors only (a tree of beams in the cache): the history is never copied per beam, and no beam prefix is run
twice. Survivors are chosen by one segmented stable sort, the same rule as the single-user path: higher score
first, ties to the earlier beam, then the smaller code, so both paths return the same items in the same order
(only two extensions closer than float32 rounding of the differently shaped forwards can swap at a cut-off).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from recbase.errors import UserError
from recbase.eval.scoring import _cache_kwarg, additive_mask, branch_logits, encode_history, truncate_history
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


def select_beams(user: torch.Tensor, scores: torch.Tensor, beam_width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The best ``beam_width`` extensions of each user: (indices into ``scores``, their rank within the user).

    ``user`` ([E], non-decreasing) groups the extensions, which are listed per user in beam order, then code order.
    A stable sort by score, then a stable sort by user, orders each user's extensions best first with ties to the
    earlier one, so the choice never depends on how ``topk`` happens to break ties and the single-user and the
    batched search select identically.
    """
    by_score = torch.sort(scores, descending=True, stable=True).indices
    order = by_score[torch.sort(user[by_score], stable=True).indices]
    counts = torch.bincount(user)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(len(order), device=order.device) - starts[user[order]]
    keep = rank < beam_width
    return order[keep], rank[keep]


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
        top, _ = select_beams(torch.zeros_like(parent), scores, beam_width)
        beams = child[top]
        beam_scores = scores[top]
        beam_tokens = torch.cat([beam_tokens[parent[top]], tokens[top, None]], dim=1)
    return beams, beam_scores


def left_padded_histories(histories: list[torch.Tensor], pad_id: int, dtype: torch.dtype) -> dict:
    """Histories as rows of one batch, left-padded so every row's last token is in the last column.

    Returns tokens, position ids (0 at each row's first real token), the number of padding columns per row and
    the additive 4D mask ``[U, 1, T, T]``: a real token sees its own history causally, a padding token only
    itself (no softmax row is empty), and nothing sees padding.
    """
    device = histories[0].device
    n = max(len(h) for h in histories)
    pad = torch.tensor([n - len(h) for h in histories], device=device)
    tokens = torch.full((len(histories), n), pad_id, dtype=torch.int64, device=device)
    for i, h in enumerate(histories):
        tokens[i, n - len(h):] = h
    col = torch.arange(n, device=device)
    real = col[None, :] >= pad[:, None]                                     # [U, T]
    positions = (col[None, :] - pad[:, None]).clamp_(min=0)
    allowed = real[:, None, :] & (col[None, None, :] <= col[None, :, None])
    allowed |= torch.eye(n, dtype=torch.bool, device=device)[None] & ~real[:, :, None]
    return {"tokens": tokens, "positions": positions, "pad": pad, "real": real,
            "mask": additive_mask(allowed, dtype)[:, None]}


@torch.no_grad()
def batched_beam_search(model, histories: list[torch.Tensor], trie: CodeTrie, n_special: int, beam_width: int,
                        pad_id: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """:func:`beam_search` for several users in one forward per level: per user (tuple indices, log P).

    Every user keeps ``beam_width`` beam slots; a slot is dead when the user has fewer live beams (a small
    catalog, or a root with few children). Dead slots still run (the layout stays rectangular) but are never
    expanded, so they cannot produce a tuple outside the catalog. The beams form a tree in the KV cache: each
    level appends one token per slot, and a beam's next token attends to its user's history and to the cached
    tokens of its own ancestors (``path``: the slot each ancestor occupied at its level), so a level costs one
    token per beam instead of re-reading the beam's whole prefix.
    """
    k, w = trie.codebook_size, beam_width
    n_users = len(histories)
    device = histories[0].device
    dtype = next(model.parameters()).dtype
    batch = left_padded_histories(histories, pad_id, dtype)
    cache_arg = _cache_kwarg(model)
    out = model(input_ids=batch["tokens"], attention_mask=batch["mask"], position_ids=batch["positions"],
                use_cache=True, logits_to_keep=1)
    cache = out.cache if "cache" in out else out.past_key_values
    hist_len = batch["tokens"].shape[1]
    lengths = hist_len - batch["pad"]
    logp = torch.log_softmax(out.logits[:, -1].float(), -1)[:, None]         # [U, 1, V]: the root slot
    beams = torch.zeros(n_users, 1, dtype=torch.int64, device=device)       # prefix index per slot
    scores = torch.zeros(n_users, 1, dtype=torch.float32, device=device)
    live = torch.ones(n_users, 1, dtype=torch.bool, device=device)
    last_token = torch.zeros(n_users, 1, dtype=torch.int64, device=device)  # each slot's newest token
    path = torch.zeros(n_users, 1, 0, dtype=torch.int64, device=device)     # slot of each ancestor, per level
    for depth in range(trie.levels):
        if depth > 0:
            # The cache holds the history, then `depth - 1` levels of `w` slot tokens; the query is this level's.
            keys = hist_len + depth * w
            allowed = torch.zeros(n_users, w, keys, dtype=torch.bool, device=device)
            allowed[:, :, :hist_len] = batch["real"][:, None, :]
            allowed.scatter_(2, hist_len + torch.arange(depth, device=device) * w + path, True)
            positions = (lengths + depth - 1)[:, None].expand(-1, w)
            logits = model(input_ids=last_token, attention_mask=additive_mask(allowed, dtype)[:, None],
                           position_ids=positions, use_cache=True, **{cache_arg: cache}).logits
            logp = torch.log_softmax(logits.float(), -1)                     # [U, w, V]
        slots = live.shape[1]
        flat = torch.nonzero(live.reshape(-1))[:, 0]                         # live slots, user-major
        parent, child = trie.expand(depth, beams.reshape(-1)[flat])
        slot = flat[parent]
        user = slot // slots
        tokens = n_special + depth * k + trie.child_code[depth][child]
        ext = scores.reshape(-1)[slot] + logp.reshape(n_users * slots, -1)[slot, tokens]
        top, rank = select_beams(user, ext, w)
        u = user[top]
        beams = torch.zeros(n_users, w, dtype=torch.int64, device=device)
        scores = torch.full((n_users, w), float("-inf"), dtype=torch.float32, device=device)
        live = torch.zeros(n_users, w, dtype=torch.bool, device=device)
        last_token = torch.full((n_users, w), pad_id, dtype=torch.int64, device=device)
        new_path = torch.zeros(n_users, w, depth + 1, dtype=torch.int64, device=device)
        beams[u, rank], scores[u, rank], live[u, rank], last_token[u, rank] = child[top], ext[top], True, tokens[top]
        new_path[u, rank] = torch.cat([path.reshape(n_users * slots, -1)[slot[top]], rank[:, None]], dim=1)
        path = new_path
    return [(beams[i][live[i]], scores[i][live[i]]) for i in range(n_users)]


class Retriever:
    """Leave-one-out retrieval over one domain's catalog.

    ``batch_users`` users share each forward in :meth:`retrieve_batch` (fewer when their padded histories would
    exceed ``batch_tokens``); users are sorted by history length first so rows pad little.
    """

    def __init__(self, model, trie: CodeTrie, n_special: int, bos_id: int, beam_width: int = 20,
                 max_context: int | None = None, batch_users: int = 32, batch_tokens: int = 8192, pad_id: int = 0):
        if beam_width < 1:
            raise UserError("beam_width must be at least 1")
        if batch_users < 1:
            raise UserError("batch_users must be at least 1")
        self.model = model
        self.trie = trie
        self.n_special = n_special
        self.bos_id = bos_id
        self.beam_width = beam_width
        self.batch_users = batch_users
        self.batch_tokens = batch_tokens
        self.pad_id = pad_id
        context = max_context or int(model.config.max_position_embeddings)
        self.max_history_tokens = context - (trie.levels - 1)
        self.device = next(model.parameters()).device

    def _items(self, tuples: torch.Tensor, scores: torch.Tensor) -> Retrieved:
        items, item_scores = [], []
        for t, s in zip(tuples.tolist(), scores.tolist()):
            for item in self.trie.items_of(t):
                items.append(item)
                item_scores.append(s)
        return Retrieved(items, item_scores)

    def _history(self, history: np.ndarray) -> torch.Tensor:
        hist = truncate_history(history, self.trie.levels, self.bos_id, self.max_history_tokens)
        return torch.as_tensor(hist, device=self.device)

    def retrieve(self, history: np.ndarray) -> Retrieved:
        """One user alone (no padding): the reference the batched path is tested against."""
        tuples, scores = beam_search(self.model, self._history(history), self.trie, self.n_special,
                                     self.beam_width)
        return self._items(tuples, scores)

    def _groups(self, lengths: list[int]) -> list[list[int]]:
        """Users sorted by length, grouped up to ``batch_users`` and rows × longest <= ``batch_tokens``."""
        groups: list[list[int]] = []
        for i in sorted(range(len(lengths)), key=lengths.__getitem__):
            if (not groups or len(groups[-1]) >= self.batch_users
                    or (len(groups[-1]) + 1) * lengths[i] > self.batch_tokens):
                groups.append([])
            groups[-1].append(i)
        return groups

    def retrieve_batch(self, histories: list[np.ndarray]) -> list[Retrieved]:
        """:meth:`retrieve` for many users, ``batch_users`` per forward; results in the order of ``histories``."""
        hists = [self._history(h) for h in histories]
        out: list[Retrieved | None] = [None] * len(hists)
        for group in self._groups([len(h) for h in hists]):
            found = batched_beam_search(self.model, [hists[i] for i in group], self.trie, self.n_special,
                                        self.beam_width, self.pad_id)
            for i, (tuples, scores) in zip(group, found):
                out[i] = self._items(tuples, scores)
        return out
