"""Linear projection + cross-entropy without the [T, V] logits matrix: the PyTorch reference.

The tokens are processed ``chunk_size`` rows at a time. For each chunk the fp32 logits ``h @ W^T`` exist only as a
[chunk, V] buffer; a *chunk step* turns that buffer into the per-row losses and overwrites it, in place, with the
gradient of the loss with respect to the logits, ``scale * (softmax - onehot(label))``. Two small matmuls then
give that chunk's share of the gradients with respect to the hidden states and the weight. The gradients are
therefore computed during the forward pass (the logits are never recomputed) and the backward pass only scales
them by the incoming gradient. Peak extra memory: one [chunk, V] fp32 buffer, an fp32 copy of the weight when the
weight is not fp32, and the [V, H] fp32 weight gradient being accumulated.

The chunk step is a parameter: ``pt_ce_chunk_step`` here, the Triton kernel
``kernels.triton.triton_fused_linear_ce.triton_ce_chunk_step`` on CUDA; both have the same contract.
"""
from __future__ import annotations

from typing import Callable

import torch

ChunkStep = Callable[[torch.Tensor, torch.Tensor, int, float], torch.Tensor]
REDUCTIONS = ("mean", "sum")
DEFAULT_CHUNK_SIZE = 1024


def pt_ce_chunk_step(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int, grad_scale: float) -> torch.Tensor:
    """Per-row losses [C] of fp32 ``logits`` [C, V]; overwrites ``logits`` with ``grad_scale * d loss / d logits``.

    Rows whose label is ``ignore_index`` get loss 0 and gradient 0.
    """
    valid = labels != ignore_index
    safe_labels = torch.where(valid, labels, 0)
    lse = torch.logsumexp(logits, dim=1)
    target = logits.gather(1, safe_labels[:, None]).squeeze(1)
    losses = torch.where(valid, lse - target, 0.0)
    logits.sub_(lse[:, None]).exp_()
    rows = torch.arange(logits.shape[0], device=logits.device)
    logits[rows, safe_labels] -= 1.0
    logits.mul_(torch.where(valid, grad_scale, 0.0)[:, None])
    return losses


def check_ce_inputs(
    hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, ignore_index: int, reduction: str,
    chunk_size: int,
) -> None:
    """Reject inputs the loss is not defined for, naming the argument (and the first bad label's row)."""
    if hidden.dim() != 2 or weight.dim() != 2:
        raise ValueError(
            f"fused_linear_cross_entropy: hidden must be [T, H] and weight [V, H], got {tuple(hidden.shape)} "
            f"and {tuple(weight.shape)}"
        )
    if hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"fused_linear_cross_entropy: hidden dim {hidden.shape[1]} != weight dim {weight.shape[1]}")
    if labels.shape != hidden.shape[:1]:
        raise ValueError(f"fused_linear_cross_entropy: labels must be [{hidden.shape[0]}], got {tuple(labels.shape)}")
    if labels.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"fused_linear_cross_entropy: labels must be integer, got {labels.dtype}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"fused_linear_cross_entropy: reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if chunk_size < 1:
        raise ValueError(f"fused_linear_cross_entropy: chunk_size must be >= 1, got {chunk_size}")
    bad = (labels != ignore_index) & ((labels < 0) | (labels >= weight.shape[0]))
    if bad.any():
        row = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"fused_linear_cross_entropy: labels[{row}]={int(labels[row])} is outside the vocabulary "
            f"[0, {weight.shape[0]}) and is not ignore_index={ignore_index}"
        )


class LinearCrossEntropy(torch.autograd.Function):
    """Chunked ``cross_entropy(hidden @ weight.T, labels)``; gradients computed in forward, scaled in backward."""

    @staticmethod
    def forward(ctx, hidden, weight, labels, ignore_index, reduction, chunk_size, chunk_step):
        n_valid = int((labels != ignore_index).sum())
        # Mean over no valid label is 0/0, as in torch.nn.functional.cross_entropy.
        scale = (1.0 / n_valid if n_valid else float("nan")) if reduction == "mean" else 1.0
        w32 = weight.float()
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros_like(w32) if ctx.needs_input_grad[1] else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk_size):
            h32 = hidden[start:start + chunk_size].float()
            logits = h32 @ w32.T
            total += chunk_step(logits, labels[start:start + chunk_size], ignore_index, scale).sum()
            if grad_hidden is not None:
                grad_hidden[start:start + chunk_size] = (logits @ w32).to(hidden.dtype)
            if grad_weight is not None:
                grad_weight.addmm_(logits.T, h32)
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.weight_dtype = weight.dtype
        return total * scale

    @staticmethod
    def backward(ctx, grad_loss):
        grad_hidden, grad_weight = ctx.saved_tensors
        if grad_hidden is not None:
            grad_hidden = (grad_hidden * grad_loss).to(grad_hidden.dtype)
        if grad_weight is not None:
            grad_weight = (grad_weight * grad_loss).to(ctx.weight_dtype)
        return grad_hidden, grad_weight, None, None, None, None, None


def linear_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, ignore_index: int, reduction: str,
    chunk_size: int, chunk_step: ChunkStep,
) -> torch.Tensor:
    """Validate, then run the chunked loss with the given chunk step (shared by every backend)."""
    check_ce_inputs(hidden, weight, labels, ignore_index, reduction, chunk_size)
    return LinearCrossEntropy.apply(hidden, weight, labels, ignore_index, reduction, chunk_size, chunk_step)


def pt_fused_linear_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100,
    reduction: str = "mean", chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> torch.Tensor:
    """``cross_entropy(hidden @ weight.T, labels, ignore_index, reduction)`` computed chunk by chunk in PyTorch;
    the loss is fp32 whatever the input dtype."""
    return linear_cross_entropy(hidden, weight, labels, ignore_index, reduction, chunk_size, pt_ce_chunk_step)
