"""FSQ item tokenizer (RecGPT): an MLP autoencoder whose latent is rounded to a fixed grid.

Each of the L code levels owns ``g`` latent dims with ``fsq_levels`` values each (``fsq_levels ** g == K``), so
there is no codebook to collapse: every code is a grid point. The price is that the grid ignores where the data
is, which shows up as collisions when items crowd into few grid cells.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from recbase.tokenizer.modules import MLP, fsq_group_size, fsq_round

log = logging.getLogger(__name__)


@dataclass
class FSQConfig:
    hidden_dims: list[int] = field(default_factory=lambda: [512, 256])  # encoder widths (decoder mirrors them)
    fsq_levels: int = 4        # values per latent dim; K must be a power of it (4 ** 4 = 256)
    epochs: int = 60           # training epochs
    batch_size: int = 512      # items per step
    lr: float = 1e-3           # Adam learning rate


def train_fsq(x: torch.Tensor, levels: int, codebook_size: int, cfg: FSQConfig, seed: int = 0,
              progress: bool = True) -> tuple[MLP, MLP, list[dict]]:
    """Encoder, decoder and per-epoch reconstruction loss for normalised embeddings ``x`` [N, D]."""
    group = fsq_group_size(codebook_size, cfg.fsq_levels)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    n, dim = x.shape
    latent = levels * group
    encoder = MLP([dim, *cfg.hidden_dims, latent])
    decoder = MLP([latent, *reversed(cfg.hidden_dims), dim])
    optimizer = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], lr=cfg.lr)
    history = []
    start = time.perf_counter()
    for epoch in tqdm(range(cfg.epochs), desc="fsq", unit="epoch", disable=not progress):
        total = 0.0
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n, cfg.batch_size):
            xb = x[perm[i:i + cfg.batch_size]]
            recon = (decoder(fsq_round(encoder(xb), cfg.fsq_levels)) - xb).pow(2).sum(-1).mean()
            optimizer.zero_grad(set_to_none=True)
            recon.backward()
            optimizer.step()
            total += recon.item() * len(xb)
        history.append({"epoch": epoch, "recon": total / n})
    log.info("fsq: %d epochs on %d items in %.1fs", cfg.epochs, n, time.perf_counter() - start)
    return encoder.eval(), decoder.eval(), history
