"""Greedy residual-quantisation search in plain PyTorch: the specification of ``rq_search``.

Level ``l`` picks ``argmin_k ||r_l - C_l[k]||^2`` and subtracts that codeword from the residual. The row-constant
``||r_l||^2`` does not change the argmin, so the score compared is ``||C_l[k]||^2 - 2 <r_l, C_l[k]>`` — the same
expression the Triton kernel evaluates, so both break near-ties the same way. All arithmetic is fp32 whatever the
input dtype; ties go to the lowest code index (``torch.argmin`` returns the first minimum).
"""
from __future__ import annotations

import torch

# Rows scored at once; bounds the [rows, K] fp32 score matrix (65536 x 2048 x 4 B = 512 MiB).
ROW_CHUNK = 65536


def check_rq_inputs(x: torch.Tensor, codebooks: torch.Tensor) -> None:
    """Reject shapes and dtypes the search is not defined for, naming the offending argument."""
    if x.dim() != 2:
        raise ValueError(f"rq_search: x must be [N, D], got shape {tuple(x.shape)}")
    if codebooks.dim() != 3:
        raise ValueError(f"rq_search: codebooks must be [L, K, D], got shape {tuple(codebooks.shape)}")
    if codebooks.shape[2] != x.shape[1]:
        raise ValueError(
            f"rq_search: codebooks dim {codebooks.shape[2]} does not match x dim {x.shape[1]}"
        )
    if codebooks.shape[0] < 1 or codebooks.shape[1] < 1:
        raise ValueError(f"rq_search: codebooks must have L >= 1 and K >= 1, got {tuple(codebooks.shape)}")
    for name, t in (("x", x), ("codebooks", codebooks)):
        if not t.is_floating_point():
            raise TypeError(f"rq_search: {name} must be a floating-point tensor, got {t.dtype}")
    if x.device != codebooks.device:
        raise ValueError(f"rq_search: x is on {x.device} but codebooks are on {codebooks.device}")


def codeword_norms(codebooks: torch.Tensor) -> torch.Tensor:
    """``||C_l[k]||^2`` in fp32, shape [L, K]; computed once per search and shared by all rows."""
    return codebooks.float().pow(2).sum(-1)


def pt_rq_search(
    x: torch.Tensor, codebooks: torch.Tensor, return_residual: bool = False
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Codes [N, L] (int64) of greedy residual quantisation; with ``return_residual`` also the fp32 residual
    ``x - sum_l C_l[code_l]`` [N, D] left after the last level (the quantised vector is ``x - residual``)."""
    check_rq_inputs(x, codebooks)
    cb = codebooks.float()
    norms = codeword_norms(codebooks)
    n_levels = cb.shape[0]
    codes = torch.empty(x.shape[0], n_levels, dtype=torch.long, device=x.device)
    residual = torch.empty(x.shape, dtype=torch.float32, device=x.device)
    for start in range(0, x.shape[0], ROW_CHUNK):
        r = x[start:start + ROW_CHUNK].float()
        for level in range(n_levels):
            scores = norms[level] - 2.0 * (r @ cb[level].T)
            idx = torch.argmin(scores, dim=1)
            codes[start:start + ROW_CHUNK, level] = idx
            r = r - cb[level, idx]
        residual[start:start + ROW_CHUNK] = r
    return (codes, residual) if return_residual else codes
