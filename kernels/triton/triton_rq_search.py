"""Greedy residual-quantisation search in one Triton launch for all levels.

A program owns ``BLOCK_N`` rows. It loads them once, keeps their fp32 residual in registers for every level,
and scans the level's codebook in ``BLOCK_K``-row tiles: score = ``||c||^2 - 2 <r, c>`` (norms precomputed on
the host, the dot product on ``tl.dot`` in IEEE fp32), reduced to a per-tile minimum and carried across tiles
as a running (best score, best index). The [N, K] score matrix never exists in global memory; global traffic
per program is its rows in, L codebook scans (shared by all programs through L2) and its codes out.

Ties: inside a tile ``tl.min(..., return_indices=True)`` breaks left (lowest index); across tiles a later tile
replaces the running best only when strictly smaller — so the first minimum wins, as in ``torch.argmin``.

``D`` is one constexpr block (``BLOCK_D`` = next power of two, at most ``MAX_D``); the tile sizes over rows and
codes shrink as ``D`` grows so the residual and one codebook tile stay within the register/shared-memory budget.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.pytorch.pt_rq_search import check_rq_inputs, codeword_norms

MAX_D = 1024
# fp32 elements allowed in the residual tile (BLOCK_N x BLOCK_D) and in one codebook tile (BLOCK_K x BLOCK_D).
TILE_BUDGET = 16384


def _configs() -> list[triton.Config]:
    """Autotuning candidates on a GPU; one fixed config elsewhere (the interpreter cannot benchmark configs)."""
    if not torch.cuda.is_available():
        return [triton.Config({"BLOCK_N": 32, "BLOCK_K": 32}, num_warps=4)]
    return [
        triton.Config({"BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w, num_stages=2)
        for bn in (16, 32, 64, 128)
        for bk in (16, 32, 64)
        for w in (4, 8)
    ]


def _fits_budget(configs, named_args, **kwargs):
    """Keep configs whose residual and codebook tiles fit ``TILE_BUDGET`` for this ``BLOCK_D`` (the 16-wide
    configs always do, since ``16 * MAX_D == TILE_BUDGET``)."""
    block_d = {**named_args, **kwargs}["BLOCK_D"]
    return [
        c for c in configs
        if c.kwargs["BLOCK_N"] * block_d <= TILE_BUDGET and c.kwargs["BLOCK_K"] * block_d <= TILE_BUDGET
    ]


@triton.autotune(configs=_configs(), key=["K", "D", "L"], prune_configs_by={"early_config_prune": _fits_budget})
@triton.jit
def _rq_search_kernel(
    x_ptr, cb_ptr, norms_ptr, codes_ptr, res_ptr,
    N, K, D,
    stride_xn, stride_xd, stride_cl, stride_ck, stride_cd,
    L: tl.constexpr, BLOCK_D: tl.constexpr, WRITE_RESIDUAL: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)  # int64: N * D may pass 2**31
    row_mask = rows < N
    dims = tl.arange(0, BLOCK_D)
    dim_mask = dims < D
    tile_mask = row_mask[:, None] & dim_mask[None, :]
    # Cast right after the load: all arithmetic below is fp32 whatever the input dtype.
    r = tl.load(x_ptr + rows[:, None] * stride_xn + dims[None, :] * stride_xd, mask=tile_mask, other=0.0)
    r = r.to(tl.float32)
    for level in tl.static_range(L):
        best = tl.full([BLOCK_N], float("inf"), tl.float32)
        best_idx = tl.zeros([BLOCK_N], tl.int32)
        for k0 in range(0, K, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            k_mask = ks < K
            c = tl.load(
                cb_ptr + level * stride_cl + ks[:, None] * stride_ck + dims[None, :] * stride_cd,
                mask=k_mask[:, None] & dim_mask[None, :], other=0.0,
            ).to(tl.float32)
            norms = tl.load(norms_ptr + level * K + ks, mask=k_mask, other=0.0)
            scores = norms[None, :] - 2.0 * tl.dot(r, tl.trans(c), input_precision="ieee")
            scores = tl.where(k_mask[None, :], scores, float("inf"))
            tile_best, tile_idx = tl.min(scores, axis=1, return_indices=True, return_indices_tie_break_left=True)
            better = tile_best < best
            best = tl.where(better, tile_best, best)
            best_idx = tl.where(better, tile_idx + k0, best_idx)
        tl.store(codes_ptr + rows * L + level, best_idx.to(tl.int64), mask=row_mask)
        chosen = tl.load(
            cb_ptr + level * stride_cl + best_idx[:, None] * stride_ck + dims[None, :] * stride_cd,
            mask=tile_mask, other=0.0,
        ).to(tl.float32)
        r = r - chosen
    if WRITE_RESIDUAL:
        tl.store(res_ptr + rows[:, None] * D + dims[None, :], r, mask=tile_mask)


def triton_rq_search(
    x: torch.Tensor, codebooks: torch.Tensor, return_residual: bool = False
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Same contract as ``kernels.pytorch.pt_rq_search.pt_rq_search``; ``D`` at most ``MAX_D``."""
    check_rq_inputs(x, codebooks)
    n, d = x.shape
    n_levels, k, _ = codebooks.shape
    if d > MAX_D:
        raise ValueError(f"rq_search (triton): D={d} exceeds the kernel's maximum {MAX_D}; use backend='pytorch'")
    norms = codeword_norms(codebooks).contiguous()
    codes = torch.empty(n, n_levels, dtype=torch.long, device=x.device)
    # The residual pointer is unused (a dummy) unless requested.
    residual = torch.empty((n, d) if return_residual else (1, 1), dtype=torch.float32, device=x.device)
    if n == 0:
        return (codes, residual) if return_residual else codes
    grid = lambda meta: (triton.cdiv(n, meta["BLOCK_N"]),)  # noqa: E731
    _rq_search_kernel[grid](
        x, codebooks, norms, codes, residual,
        n, k, d,
        x.stride(0), x.stride(1), codebooks.stride(0), codebooks.stride(1), codebooks.stride(2),
        L=n_levels, BLOCK_D=max(16, triton.next_power_of_2(d)), WRITE_RESIDUAL=return_residual,
    )
    return (codes, residual) if return_residual else codes
