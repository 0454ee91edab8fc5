"""The next-item embedding head's score (:mod:`recbase.train.embedding_head`): cosine between the direction the
head predicts after the user's history and each candidate's centred text embedding.

The prediction is made from the history alone: the model's hidden state at the history's last token and the
history items' centred unit embeddings (whose mean is the text bar's own profile). A candidate enters only through
its own centred embedding, never through its concept tokens, so nothing about a candidate can leak into the
prediction it is compared with. An untrained head ranks exactly like the centred text similarity
when a history has at most the head's window of items (:data:`~recbase.train.embedding_head.HISTORY_WINDOW`).
"""
from __future__ import annotations

import numpy as np
import torch

from recbase.eval.baselines import TextSimilarity
from recbase.eval.scoring import truncate_history


@torch.no_grad()
def history_states(model, histories: list[np.ndarray], levels: int, bos_id: int, pad_id: int,
                   batch_tokens: int = 8192) -> torch.Tensor:
    """``[U, H]`` float32: the last layer's hidden state at each history's last token.

    Histories longer than the context keep ``bos`` and their latest whole items, as in scoring. Users are sorted by
    length and right-padded in batches of at most ``batch_tokens`` padded tokens; causal attention keeps padding
    (always after the real tokens) out of every real token's view.
    """
    device = next(model.parameters()).device
    context = int(model.config.max_position_embeddings)
    hist = [truncate_history(h, levels, bos_id, context) for h in histories]
    order = sorted(range(len(hist)), key=lambda i: len(hist[i]))
    out = torch.empty(len(hist), model.config.hidden_size, dtype=torch.float32)
    start = 0
    while start < len(order):
        stop = start + 1
        while stop < len(order) and (stop - start + 1) * len(hist[order[stop]]) <= batch_tokens:
            stop += 1
        group = order[start:stop]
        longest = len(hist[group[-1]])
        ids = torch.full((len(group), longest), pad_id, dtype=torch.int64)
        mask = torch.zeros((len(group), longest), dtype=torch.int64)
        for row, i in enumerate(group):
            ids[row, :len(hist[i])] = torch.as_tensor(hist[i])
            mask[row, :len(hist[i])] = 1
        hidden = model.base_model(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
        last = torch.as_tensor([len(hist[i]) - 1 for i in group], device=device)
        out[group] = hidden[torch.arange(len(group), device=device), last].float().cpu()
        start = stop
    return out


def history_layout(lengths: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``allowed`` and ``distance`` as :class:`~recbase.train.embedding_head.EmbeddingHead` takes them, for one
    prediction per user after the users' histories of ``lengths`` items, concatenated in order, latest last."""
    owner = torch.cat([torch.full((n,), u) for u, n in enumerate(lengths)])
    index = torch.cat([torch.arange(n) for n in lengths])
    allowed = owner[None, :] == torch.arange(len(lengths))[:, None]
    distance = (torch.as_tensor(lengths)[owner] - 1 - index)[None, :].expand(len(lengths), -1)
    return allowed, distance


@torch.no_grad()
def head_scores(head, hidden: torch.Tensor, text: TextSimilarity, history_items: list[list[str]],
                candidates: list[list[str]], users_per_batch: int = 256) -> list[np.ndarray]:
    """Per user, the cosine of each candidate's centred embedding with the head's prediction, made from the
    hidden state after the history and the history items' centred embeddings (latest last)."""
    device = head.proj.weight.device
    scores = []
    for start in range(0, len(history_items), users_per_batch):
        users = history_items[start:start + users_per_batch]
        vectors = [text.vectors(h, "history") if h else np.zeros((0, text.emb.shape[1]), np.float32) for h in users]
        allowed, distance = history_layout([len(v) for v in vectors])
        pred = head(hidden[start:start + len(users)].to(device), torch.from_numpy(np.concatenate(vectors)).to(device),
                    allowed.to(device), distance.to(device)).cpu().numpy()
        scores += [(text.vectors(c) @ p).astype(np.float64)
                   for c, p in zip(candidates[start:start + len(users)], pred)]
    return scores
