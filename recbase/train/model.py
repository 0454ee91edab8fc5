"""The model: a Hugging Face ``Qwen2ForCausalLM`` built from :class:`~recbase.train.config.ModelConfig`, the
attention masks that keep packed users apart, and the summed next-token loss.

Everything here is single-device code. The DeepSpeed engine (``recbase.train.engine``) passes in the context that
partitions parameters at construction (ZeRO-3) and the one that gathers them, so this module never imports
DeepSpeed.

Packing: one row holds many users. Which query may see which key is one predicate, :func:`packed_mask_mod`
(same user, causal, and with the hybrid pattern the rest of the own item), over the per-user segments of
``cu_seqlens``. Each attention implementation gets it in its own form:

- SDPA and eager: an additive float ``[B, 1, S, S]`` tensor (0 = may attend, dtype minimum = may not); a boolean
  4D mask is not used because eager attention adds it as numbers.
- FlexAttention: a ``BlockMask`` built from the same predicate; 128 x 128 tiles no query of which may see any key
  are skipped by the kernel, so attention costs what the users' own triangles cost, not the whole row's square.
- FlashAttention-2: no mask; ``position_ids`` (restarting at 0 per user) make Hugging Face run varlen attention
  with the same segments.
"""
from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass
from typing import Callable, ContextManager, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from recbase.errors import UserError
from recbase.train.config import ModelConfig
from recbase.train.embedding_head import EmbeddingHead, ItemVectors, embedding_loss, next_item_targets
from recbase.train.text_inputs import TextInputs
from recbase.vocab import Vocab

IGNORE_INDEX = -100
GatherFn = Callable[[list], ContextManager]


def flash_attn_available() -> bool:
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_attention(name: str, device_type: str, pattern: str = "causal") -> str:
    """``auto``: FlashAttention-2 on CUDA when ``flash_attn`` imports (and the pattern is causal: FA2 takes no
    mask), else FlexAttention on CUDA (PyTorch alone, no compiled extension), SDPA with the dense mask on CPU.

    FlexAttention is refused off CUDA: PyTorch has no FlexAttention backward on CPU.
    """
    if name == "auto":
        if device_type != "cuda":
            return "sdpa"
        return "flash_attention_2" if pattern == "causal" and flash_attn_available() else "flex_attention"
    if name in ("flash_attention_2", "flex_attention") and device_type != "cuda":
        raise UserError(f"model.attention={name} needs a CUDA device (use sdpa or auto on {device_type})")
    return name


def qwen2_config(cfg: ModelConfig, vocab_size: int, attention: str = "sdpa", pad_token_id: int = 0):
    """The ``transformers.Qwen2Config`` for ``cfg`` with ``vocab_size`` tokens."""
    from transformers import Qwen2Config

    config = Qwen2Config(
        vocab_size=vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads or cfg.num_heads, max_position_embeddings=cfg.max_position_embeddings,
        rope_theta=cfg.rope_theta, rms_norm_eps=cfg.rms_norm_eps, tie_word_embeddings=cfg.tie_word_embeddings,
        initializer_range=cfg.init_std, attention_dropout=cfg.dropout, use_cache=False, pad_token_id=pad_token_id,
        bos_token_id=1, eos_token_id=2,
    )
    config._attn_implementation = attention
    return config


def build_model(config, seed: int, gather: GatherFn | None = None):
    """Construct ``Qwen2ForCausalLM`` and initialise it deterministically from ``seed``.

    Built through ``_from_config`` so that, while an ``HfDeepSpeedConfig`` for ZeRO-3 is alive, parameters are
    partitioned as they are created. The weights are then set by :func:`init_weights`, which gives identical
    weights for any ZeRO stage and any number of ranks (so runs are comparable and the first loss does not
    depend on how the model was partitioned).
    """
    from transformers import Qwen2ForCausalLM

    model = Qwen2ForCausalLM._from_config(config, attn_implementation=config._attn_implementation)
    init_weights(model, seed, config.initializer_range, gather)
    return model


def add_dropout(model, p: float) -> None:
    """Dropout with probability ``p`` on the token embeddings and on the output of every attention and MLP block
    before it joins the residual stream, active only in training mode.

    Qwen2 itself drops out attention weights only (``attention_dropout``, set from the same option by
    :func:`qwen2_config`). The rest is added as forward hooks, so the parameter names, the Hugging Face export and
    the evaluation model (which runs in eval mode) stay exactly as without dropout.
    """
    def drop(module: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor:
        return F.dropout(output, p, training=module.training)

    if not p:
        return
    model.get_input_embeddings().register_forward_hook(drop)
    for layer in model.model.layers:
        layer.self_attn.o_proj.register_forward_hook(drop)
        layer.mlp.down_proj.register_forward_hook(drop)


def _param_generator(seed: int, name: str) -> torch.Generator:
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


@torch.no_grad()
def init_weights(model: nn.Module, seed: int, std: float, gather: GatherFn | None = None) -> None:
    """Normal(0, std) for weight matrices, ones for RMSNorm scales, zeros for biases.

    Each parameter draws from its own generator seeded by (seed, parameter name) on the CPU, at its full shape,
    so the result does not depend on construction order or partitioning. ``gather`` makes partitioned (ZeRO-3)
    parameters whole for the duration of the write.
    """
    gather = gather or (lambda params: contextlib.nullcontext())
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        params = [(n, p) for n, p in module.named_parameters(recurse=False) if id(p) not in seen]
        if not params:
            continue
        seen.update(id(p) for _, p in params)
        with gather([p for _, p in params]):
            is_norm = "norm" in type(module).__name__.lower()
            for name, p in params:
                full = f"{module_name}.{name}" if module_name else name
                if is_norm:
                    p.fill_(1.0)
                elif name == "bias":
                    p.zero_()
                else:
                    value = torch.empty(p.shape, dtype=torch.float32)
                    value.normal_(0.0, std, generator=_param_generator(seed, full))
                    p.copy_(value.to(p.dtype))


@torch.no_grad()
def init_code_embeddings(model: nn.Module, codebooks: torch.Tensor, n_special: int, seed: int, std: float,
                         gather: GatherFn | None = None) -> None:
    """Add to every concept token's embedding a fixed random projection of its codeword (``codebooks``
    ``[L, K, D]``: token ``n_special + l*K + c`` gets codeword ``c`` of level ``l``), scaled per level to ``std``.

    Random embeddings make a new catalog's tokens meaningless to the model except through the statistics of the
    training domains. Codewords place tokens by what their items' texts say, in every domain alike (the tokenizer
    centres each domain on its own mean), so what the model learns about a training domain's tokens also applies
    to a new domain's tokens that mean similar things. The random part of the embedding stays, keeping the levels
    apart. With tied embeddings the output projection starts from the same geometry.
    """
    gather = gather or (lambda params: contextlib.nullcontext())
    levels, k, dim = codebooks.shape
    emb = model.get_input_embeddings().weight
    with gather([emb]):  # a ZeRO-3 parameter has its full shape only while gathered
        proj = torch.empty(dim, emb.shape[1]).normal_(generator=_param_generator(seed, "code_init.projection"))
        vectors = codebooks.float() @ proj                               # [L, K, hidden]
        vectors = vectors - vectors.mean(dim=1, keepdim=True)
        vectors = vectors / vectors.std(dim=(1, 2), keepdim=True).clamp_min(1e-12) * std
        if emb.shape[0] < n_special + levels * k:
            raise ValueError(f"the embedding has {emb.shape[0]} rows, fewer than the {n_special + levels * k} "
                             f"token ids of {levels} levels x {k} codes")
        rows = slice(n_special, n_special + levels * k)
        emb[rows] = (emb[rows].float() + vectors.reshape(levels * k, -1)).to(emb.dtype)


def segment_ids(cu_seqlens: torch.Tensor, batch_size: int, seq_len: int) -> torch.Tensor:
    """``[B, S]`` index of the segment (user, or padding run) of every token, from cumulative lengths."""
    positions = torch.arange(batch_size * seq_len, device=cu_seqlens.device)
    seg = torch.bucketize(positions, cu_seqlens[1:].to(positions.dtype), right=True)
    return seg.view(batch_size, seq_len)


def item_blocks(position_ids: torch.Tensor, levels: int) -> torch.Tensor:
    """Index of the item each token belongs to inside its user: ``bos`` is block -1, then L tokens per item."""
    return torch.div(position_ids - 1, levels, rounding_mode="floor")


def packed_mask_mod(segments: torch.Tensor, blocks: torch.Tensor | None = None):
    """The packing predicate as a FlexAttention ``mask_mod(b, h, q, kv)``: query ``q`` of row ``b`` may see key
    ``kv`` when both lie in the same segment and ``kv <= q``. With ``blocks`` (RecGPT's hybrid pattern) a token
    also sees the later tokens of its own item.

    Written with indexing and elementwise operators only, so the same function evaluates one element (inside the
    FlexAttention kernel) or a whole broadcast grid (:func:`packed_attention_mask`).
    """
    def mask_mod(b, h, q, kv):
        allowed = q >= kv
        if blocks is not None:
            allowed = allowed | (blocks[b, q] == blocks[b, kv])
        return allowed & (segments[b, q] == segments[b, kv])

    return mask_mod


def packed_attention_mask(segments: torch.Tensor, dtype: torch.dtype, blocks: torch.Tensor | None = None
                          ) -> torch.Tensor:
    """Additive ``[B, 1, S, S]`` mask of :func:`packed_mask_mod` (0 = may attend, dtype minimum = may not)."""
    b, s = segments.shape
    idx = torch.arange(s, device=segments.device)
    rows = torch.arange(b, device=segments.device)[:, None, None]
    allowed = packed_mask_mod(segments, blocks)(rows, 0, idx[None, :, None], idx[None, None, :])
    mask = torch.zeros(allowed.shape, dtype=dtype, device=segments.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None]


def packed_block_mask(segments: torch.Tensor, blocks: torch.Tensor | None = None):
    """FlexAttention ``BlockMask`` of :func:`packed_mask_mod` for ``[B, S]`` segments (one mask for all heads)."""
    from torch.nn.attention.flex_attention import create_block_mask

    b, s = segments.shape
    return create_block_mask(packed_mask_mod(segments, blocks), B=b, H=None, Q_LEN=s, KV_LEN=s,
                             device=segments.device)


def hybrid_labels(labels: torch.Tensor, position_ids: torch.Tensor, levels: int) -> torch.Tensor:
    """Drop the labels the hybrid pattern would leak: a token predicted from a position inside its own item.

    Under bidirectional attention within an item, the position before token ``t`` already sees ``t`` when both
    lie in the same item, so only predictions that cross into the next item (and ``eos``) stay.
    """
    blocks = item_blocks(position_ids, levels)
    prev = torch.cat([torch.full_like(blocks[:, :1], -2), blocks[:, :-1]], dim=1)
    leaks = (position_ids >= 2) & (blocks == prev)
    return labels.masked_fill(leaks, IGNORE_INDEX)


class FusedHeadLoss(nn.Module):
    """Summed cross-entropy of ``hidden @ weight.T`` without the logits (``kernels.fused_linear_ce``).

    The output weight is registered here as well (shared, like tied embeddings), so calling this module makes
    ZeRO-3 gather it for the forward and again for the backward, exactly as for ``lm_head`` itself.
    """

    def __init__(self, head: nn.Linear):
        super().__init__()
        from kernels.fused_linear_ce import fused_linear_cross_entropy

        self.weight = head.weight
        self._fn = fused_linear_cross_entropy

    def forward(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self._fn(hidden, self.weight, targets, ignore_index=IGNORE_INDEX, reduction="sum")


@dataclass
class EmbeddingTarget:
    """How the next-item embedding head is trained: a head of ``kind`` (linear | attention), targets from
    ``item_vectors``, ``loss`` (cosine | contrastive) with ``temperature``, added to the token loss with ``weight``
    per predicted item."""

    vocab: Vocab
    item_vectors: ItemVectors
    loss: str = "cosine"
    weight: float = 1.0
    temperature: float = 0.1
    kind: str = "attention"


class TokenLossModel(nn.Module):
    """Wraps the causal LM so one forward returns the *summed* next-token loss and the label count.

    Summing (not averaging) lets the loop divide by the token count of the whole global batch, so every label
    token weighs the same however users fall into rows, micro-batches and ranks. With ``embedding_head`` the
    next-item embedding head's summed loss, times its weight, is added (its own value is in ``embedding_stats``).
    With ``text_inputs`` (:mod:`recbase.train.text_inputs`) the items' text vectors are added to the input
    embeddings.
    """

    def __init__(self, lm: nn.Module, attention: str, attention_pattern: str = "causal", levels: int = 4,
                 fused_linear_ce: bool = False, embedding_head: EmbeddingTarget | None = None,
                 text_inputs: TextInputs | None = None):
        super().__init__()
        self.lm = lm
        self.text_inputs = text_inputs
        self.attention = attention
        self.hybrid = attention_pattern == "hybrid"
        self.levels = levels
        self.head_loss = FusedHeadLoss(lm.lm_head) if fused_linear_ce else None
        self.embedding = embedding_head
        self.embedding_head = (EmbeddingHead(lm.config.hidden_size, embedding_head.item_vectors.dim,
                                             embedding_head.kind) if embedding_head is not None else None)
        self.embedding_stats = (0.0, 0)   # the head's summed loss and predictions in the last forward
        if self.hybrid and attention == "flash_attention_2":
            raise UserError("model.attention_pattern=hybrid needs an explicit mask: use model.attention=sdpa or "
                            "flex_attention")

    @property
    def config(self):
        """The language model's config (DeepSpeed AutoTP reads head counts from ``model.config``)."""
        return self.lm.config

    def attention_mask(self, input_ids, position_ids, cu_seqlens, dtype):
        """What the attention implementation takes to keep users apart (module docstring)."""
        if self.attention == "flash_attention_2":
            return None
        b, s = input_ids.shape
        blocks = item_blocks(position_ids, self.levels) if self.hybrid else None
        segments = segment_ids(cu_seqlens, b, s)
        if self.attention == "flex_attention":
            return packed_block_mask(segments, blocks)
        return packed_attention_mask(segments, dtype, blocks)

    def forward(self, input_ids, labels, position_ids, cu_seqlens):
        dtype = self.lm.get_input_embeddings().weight.dtype
        mask = self.attention_mask(input_ids, position_ids, cu_seqlens, dtype)
        if self.hybrid:
            labels = hybrid_labels(labels, position_ids, self.levels)
        inputs = {"input_ids": input_ids}
        if self.text_inputs is not None:
            segments = segment_ids(cu_seqlens, *input_ids.shape)
            inputs = {"inputs_embeds": self.text_inputs(input_ids, self.lm.model.embed_tokens(input_ids), segments)}
        hidden = self.lm.model(**inputs, attention_mask=mask, position_ids=position_ids).last_hidden_state
        extra = self._embedding_loss(hidden, input_ids, labels, cu_seqlens) if self.embedding_head is not None else None
        hidden, targets = hidden[:, :-1], labels[:, 1:]
        n_tokens = (targets != IGNORE_INDEX).sum()
        if self.head_loss is not None:
            loss = self.head_loss(hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1))
        else:
            logits = self.lm.lm_head(hidden).float()
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                   ignore_index=IGNORE_INDEX, reduction="sum")
        loss = loss.float()
        if extra is not None:
            loss = loss + self.embedding.weight * extra
        return loss, n_tokens

    def _embedding_loss(self, hidden, input_ids, labels, cu_seqlens) -> torch.Tensor:
        """The next-item embedding head's summed loss (:mod:`recbase.train.embedding_head`); its value and the
        number of predictions are kept in ``embedding_stats`` for the training log."""
        b, s = input_ids.shape
        spec = self.embedding
        found = next_item_targets(input_ids, labels, segment_ids(cu_seqlens, b, s), spec.vocab, spec.item_vectors)
        pred = self.embedding_head(hidden.reshape(b * s, -1)[found["positions"]], found["vectors"], found["allowed"],
                                   found["distance"])
        loss = embedding_loss(pred, found["target"], found["group"], spec.loss, spec.temperature)
        self.embedding_stats = (float(loss.detach()), int(len(pred)))
        return loss


def count_parameters(params: Iterable[torch.nn.Parameter]) -> int:
    """Parameters counted once each (tied weights once), partitioned ZeRO-3 parameters at full size."""
    seen, total = set(), 0
    for p in params:
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += int(getattr(p, "ds_numel", p.numel()))
    return total


@torch.no_grad()
def load_weights(model: nn.Module, state: dict[str, torch.Tensor], gather: GatherFn | None = None) -> None:
    """Copy ``state`` (Hugging Face parameter names) into ``model``, gathering partitioned parameters."""
    gather = gather or (lambda params: contextlib.nullcontext())
    params = dict(model.named_parameters())
    missing = sorted(set(params) - set(state))
    if missing:
        raise UserError(f"weights lack {len(missing)} parameter(s) of the model, e.g. {', '.join(missing[:3])}")
    for name, p in params.items():
        shape = tuple(getattr(p, "ds_shape", p.shape))
        if tuple(state[name].shape) != shape:
            raise UserError(f"parameter {name}: weights have shape {tuple(state[name].shape)}, model {shape}")
        with gather([p]):
            p.copy_(state[name].to(p.dtype))
