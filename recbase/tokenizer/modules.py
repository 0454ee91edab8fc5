"""Inference building blocks shared by training and by the artifact: the MLP, residual codebook lookup, FSQ.

Nothing here trains anything, so :mod:`recbase.tokenizer.artifact` can encode items with this module alone.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from kernels.rq_search import rq_search

from recbase.errors import UserError


class MLP(nn.Sequential):
    """Linear layers with SiLU between them (none after the last), as in the RQ-VAE encoders of TIGER/RecBase."""

    def __init__(self, dims: list[int]):
        if len(dims) < 2:
            raise ValueError(f"an MLP needs at least input and output dims, got {dims}")
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(dims) - 2:
                layers.append(nn.SiLU())
        super().__init__(*layers)
        self.dims = list(dims)


def residual_codes(x: torch.Tensor, codebooks: torch.Tensor) -> torch.Tensor:
    """Greedy residual codes [N, L] of ``x`` [N, D] against ``codebooks`` [L, K, D] (the kernel dispatcher)."""
    return rq_search(x.contiguous(), codebooks.contiguous())


def residual_vectors(codebooks: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Sum over levels of the chosen codewords: the quantised vector [N, D] for ``codes`` [N, L]."""
    levels = torch.arange(codes.shape[1], device=codes.device)
    return codebooks[levels, codes].sum(dim=1)


def fsq_group_size(codebook_size: int, fsq_levels: int) -> int:
    """Number of latent dims per code level: ``g`` with ``fsq_levels ** g == codebook_size``."""
    if fsq_levels < 2:
        raise UserError(f"fsq levels per dimension must be >= 2, got {fsq_levels}")
    g = round(math.log(codebook_size, fsq_levels))
    if g < 1 or fsq_levels ** g != codebook_size:
        raise UserError(f"codebook size {codebook_size} is not a power of fsq levels per dimension {fsq_levels}")
    return g


def fsq_round(z: torch.Tensor, q: int) -> torch.Tensor:
    """FSQ (Mentzer et al. 2023): squash each dim into q equally spaced values in [-1, 1], straight-through.

    ``tanh`` bounds the dim to ``(-h, h)`` with ``h = (q - 1) / 2``; rounding goes to integers for odd q and to
    half-integers for even q, so the grid is symmetric (q = 2 gives ±0.5 rather than a saturated 0/-1 pair).
    The result is divided by ``h``; the gradient passes through the rounding unchanged.
    """
    half = (q - 1) / 2
    bounded = torch.tanh(z) * half
    offset = 0.5 if q % 2 == 0 else 0.0
    rounded = torch.round(bounded - offset) + offset
    return (bounded + (rounded - bounded).detach()) / half


def fsq_digits_to_codes(values: torch.Tensor, q: int, levels: int) -> torch.Tensor:
    """FSQ grid values [N, levels * g] → codes [N, levels]: each level's g digits read as a base-q number."""
    half = (q - 1) / 2
    digits = torch.round(values * half + half).long().view(values.shape[0], levels, -1)
    weights = q ** torch.arange(digits.shape[-1], device=values.device)
    return (digits * weights).sum(-1)


def fsq_codes_to_values(codes: torch.Tensor, q: int, group: int) -> torch.Tensor:
    """Codes [N, L] → the FSQ grid values [N, L * group] the decoder reads (inverse of ``fsq_digits_to_codes``)."""
    half = (q - 1) / 2
    weights = q ** torch.arange(group, device=codes.device)
    digits = (codes.unsqueeze(-1) // weights) % q
    return ((digits.float() - half) / half).flatten(1)
