"""Greedy residual-quantisation code search: the Triton kernel on CUDA, the PyTorch reference elsewhere.

This is the entry point the item tokenizer calls to turn embeddings into concept codes.
"""
from __future__ import annotations

import torch

from kernels.dispatch import pick_backend
from kernels.pytorch.pt_rq_search import pt_rq_search


def rq_search(
    x: torch.Tensor,
    codebooks: torch.Tensor,
    backend: str | None = None,
    return_residual: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Codes [N, L] (int64) for rows ``x`` [N, D] against ``codebooks`` [L, K, D].

    Level l picks ``argmin_k ||r_l - C_l[k]||^2`` (ties to the lowest k) with ``r_0 = x`` and
    ``r_{l+1} = r_l - C_l[code_l]``; distances are fp32 for fp32, bf16 and fp16 inputs. With
    ``return_residual=True`` returns ``(codes, residual)``, the fp32 residual after the last level, so the
    quantised vector is ``x - residual``.
    """
    if pick_backend(x.device, backend) == "triton":
        from kernels.triton.triton_rq_search import triton_rq_search

        return triton_rq_search(x, codebooks, return_residual=return_residual)
    return pt_rq_search(x, codebooks, return_residual=return_residual)
