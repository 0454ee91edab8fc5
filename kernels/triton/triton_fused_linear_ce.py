"""The cross-entropy chunk step of ``fused_linear_cross_entropy`` as one Triton kernel.

One program per row of the fp32 logits chunk [C, V]. Pass 1 streams the row in ``BLOCK_V`` tiles keeping a
running maximum ``m`` and a running sum ``s`` of ``exp(x - m)`` (rescaled by ``exp(m_old - m_new)`` when the
maximum grows): the online log-sum-exp, ``lse = m + log(s)``. Pass 2 streams the row again and overwrites it with
``grad_scale * (exp(x - lse) - [col == label])``. The row is read twice and written once; nothing else touches
global memory besides the label and the row's loss. Rows labelled ``ignore_index`` get loss 0 and gradient 0.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

MAX_BLOCK_V = 4096


@triton.jit
def _ce_step_kernel(
    logits_ptr, labels_ptr, loss_ptr, V, stride_row, ignore_index, grad_scale, BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    row_ptr = logits_ptr + row * stride_row
    label = tl.load(labels_ptr + row).to(tl.int64)
    valid = label != ignore_index

    m = float("-inf")
    s = 0.0
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        x = tl.load(row_ptr + cols, mask=cols < V, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(x, axis=0))
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), axis=0)
        m = m_new
    lse = m + tl.log(s)

    target = tl.load(row_ptr + tl.where(valid, label, 0)).to(tl.float32)
    tl.store(loss_ptr + row, tl.where(valid, lse - target, 0.0))

    scale = tl.where(valid, grad_scale, 0.0)
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        mask = cols < V
        x = tl.load(row_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        grad = tl.exp(x - lse) - tl.where(cols == label, 1.0, 0.0)
        tl.store(row_ptr + cols, grad * scale, mask=mask)


def triton_ce_chunk_step(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int, grad_scale: float, block_v: int | None = None,
) -> torch.Tensor:
    """Same contract as ``kernels.pytorch.pt_fused_linear_ce.pt_ce_chunk_step``; ``logits`` must be contiguous
    fp32. ``block_v`` (a power of two) overrides the tile width over the vocabulary."""
    if logits.dtype != torch.float32 or not logits.is_contiguous():
        raise ValueError("triton_ce_chunk_step: logits must be a contiguous fp32 tensor")
    n_rows, vocab = logits.shape
    losses = torch.empty(n_rows, dtype=torch.float32, device=logits.device)
    if n_rows == 0:
        return losses
    block_v = block_v or min(MAX_BLOCK_V, triton.next_power_of_2(vocab))
    _ce_step_kernel[(n_rows,)](
        logits, labels.contiguous(), losses, vocab, logits.stride(0), ignore_index, float(grad_scale),
        BLOCK_V=block_v, num_warps=8 if block_v >= 2048 else 4,
    )
    return losses
