"""Items' text vectors as model inputs: each item's vector, through a learned projection, is added to the input
embedding at the item's last concept token.

Why: a concept-ID model pretrained on other domains sees a new catalog's items only as ids it has no statistics
for, so its hidden state carries nothing a new catalog can use. The item's text vector lives in a space that
means the same in every domain (centred on the domain's own catalog), so what the model learns to compute from it
(how the latest item relates to the earlier ones, say) can carry over to an unseen domain.

Which vector: the one the next-item embedding head's targets use (:class:`~recbase.train.embedding_head.ItemVectors`),
the tokenizer's reconstruction of the item from its concept tokens. It is a function of the tokens alone, so the
shards stay as they are and every path that runs the model (training, the batched and cached candidate scorers,
the head's history states, beam search, the recommender) computes the same inputs from the token ids it feeds.

No leak: the vector enters at the item's last token, where causal attention already shows every code of the
item, so nothing about item t reaches the predictions of item t's own codes; it first informs the prediction of
item t+1. The projection starts at zero, so an untrained model with text inputs is exactly the model without.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from recbase.train.embedding_head import item_ends
from recbase.vocab import Vocab

STATE_PREFIX = "text_inputs."   # parameter names of the projection beside the language model's ``lm.``

VectorsFn = Callable[[torch.Tensor], torch.Tensor]   # [N, L] concept tokens -> [N, D] unit vectors


class TextInputs(nn.Module):
    """Adds ``proj(vector of item)`` to the input embedding at the last token of every complete item.

    ``item_vectors`` maps an item's L concept tokens to its vector (normally an
    :class:`~recbase.train.embedding_head.ItemVectors`); it is not a module, so the frozen tokenizer stays out of
    the optimizer and of ZeRO's partitioning.
    """

    def __init__(self, hidden_size: int, dim: int, vocab: Vocab, item_vectors: VectorsFn):
        super().__init__()
        self.vocab = vocab
        self.item_vectors = item_vectors
        self.proj = nn.Linear(dim, hidden_size, bias=False)
        with torch.no_grad():
            self.proj.weight.zero_()

    def forward(self, input_ids: torch.Tensor, embeds: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
        """``embeds`` ``[B, S, H]`` of ``input_ids`` with the projected vectors added at the items' last tokens.

        ``segments`` ``[B, S]`` names the user of every token: an item counts only when its L tokens lie in one
        segment, in level order (a chunk cut from the middle of a user starts with a partial item, which gets
        nothing).
        """
        levels = self.vocab.levels
        ends = item_ends(input_ids, segments, self.vocab)
        tokens = input_ids.reshape(-1)[ends[:, None] - torch.arange(levels - 1, -1, -1, device=ends.device)]
        weight = self.proj.weight
        # the projection runs even without an item, so every rank uses it in every forward (ZeRO-3 expects that)
        added = self.proj(self.item_vectors(tokens).to(weight.device, weight.dtype))
        flat = embeds.reshape(-1, embeds.shape[-1]).index_add(0, ends, added.to(embeds.dtype))
        return flat.view_as(embeds)


class TextInputEmbedding(nn.Module):
    """A trained model's input embedding with its text inputs, for inference: put in place of the language model's
    ``embed_tokens``, so every forward of the model (with ``input_ids``, cached or not) gets the same inputs as in
    training.

    Each row is one user. A row that holds an item's last token without the item's earlier codes (a cached
    continuation that completes an item) cannot be given the item's vector: that is refused rather than scored
    differently from training.
    """

    def __init__(self, embedding: nn.Embedding, text_inputs: TextInputs):
        super().__init__()
        self.embedding = embedding
        self.text_inputs = text_inputs

    @property
    def weight(self) -> nn.Parameter:
        return self.embedding.weight

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        vocab = self.text_inputs.vocab
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)[:, None].expand_as(input_ids)
        last_level = vocab.n_special + (vocab.levels - 1) * vocab.codebook_size
        n_last = int(((input_ids >= last_level) & (input_ids < vocab.n_tokens)).sum())
        n_items = len(item_ends(input_ids, rows, vocab))
        if n_items != n_last:
            raise ValueError(f"{n_last - n_items} item(s) end in this input without their earlier codes: a model "
                             "with text inputs needs every item it completes whole in one forward")
        return self.text_inputs(input_ids, self.embedding(input_ids), rows)


def install(lm: nn.Module, text_inputs: TextInputs) -> nn.Module:
    """Put ``text_inputs`` into the Hugging Face causal LM ``lm`` for inference (:class:`TextInputEmbedding`)."""
    lm.base_model.embed_tokens = TextInputEmbedding(lm.base_model.embed_tokens, text_inputs)
    return lm
