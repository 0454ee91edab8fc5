"""Fused LM-head projection + cross-entropy: the Triton chunk step on CUDA, the PyTorch reference elsewhere.

Under DeepSpeed ZeRO-3 the head weight is partitioned between steps; call this inside the model's forward, where
the weight is gathered, not on a parameter read from outside the module (see docs/kernels.md).
"""
from __future__ import annotations

import torch

from kernels.dispatch import pick_backend
from kernels.pytorch.pt_fused_linear_ce import DEFAULT_CHUNK_SIZE, linear_cross_entropy, pt_ce_chunk_step


def fused_linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int = -100,
    reduction: str = "mean",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    backend: str | None = None,
) -> torch.Tensor:
    """``cross_entropy(hidden @ weight.T, labels, ignore_index=..., reduction=...)`` for ``hidden`` [T, H],
    ``weight`` [V, H], ``labels`` [T], never holding more than ``chunk_size`` rows of fp32 logits.

    Differentiable with respect to ``hidden`` and ``weight`` (gradients in their dtypes). The loss is an fp32
    scalar whatever the input dtype, so a ``sum`` over many tokens keeps its precision.
    """
    if pick_backend(hidden.device, backend) == "triton":
        from kernels.triton.triton_fused_linear_ce import triton_ce_chunk_step

        step = triton_ce_chunk_step
    else:
        step = pt_ce_chunk_step
    return linear_cross_entropy(hidden, weight, labels, ignore_index, reduction, chunk_size, step)
