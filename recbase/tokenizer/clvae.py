"""CL-VAE: the residual-quantised autoencoder of RecBase, trained level by level (a curriculum).

What each component is for, and the switch that turns it off (for the paper's ablations):

- **k-means initialisation** (``kmeans_init``): a level's codebook starts as k-means centres of the residuals it
  is about to quantise, instead of tiny random vectors that most inputs never reach.
- **curriculum** (``curriculum``): level 1 trains alone; level l+1 is added when the loss plateaus or after
  ``epochs_per_level`` epochs, so coarse codes settle before finer levels start fitting what is left.
- **dead-code re-initialisation** (``reinit_dead``): after every epoch, at every active level, a code used by
  fewer than ``dead_threshold`` items is moved onto the residual of an item that its current code serves badly
  (sampled in proportion to the quantisation error), so capacity goes where the data is.
- **entropy regulariser** (``entropy_weight``): soft assignments (softmax over negative squared distances, with
  a temperature relative to the batch's mean distance) are averaged over the batch and the entropy of that mean
  is maximised. Unlike entropy of hard argmin counts, this passes gradient to the encoder and the codebooks.
- **commitment loss** with weight ``beta``, and the codebook loss, as in VQ-VAE / RQ-VAE.

Plain RQ-VAE = all four switches off (``curriculum=false kmeans_init=false reinit_dead=false entropy_weight=0``).
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from tqdm import tqdm

from recbase.errors import UserError
from recbase.tokenizer.kmeans import kmeans, squared_distances
from recbase.tokenizer.modules import MLP, residual_codes

log = logging.getLogger(__name__)


@dataclass
class CLVAEConfig:
    hidden_dims: list[int] = field(default_factory=lambda: [512, 256])  # encoder widths (decoder mirrors them)
    latent_dim: int = 64                 # dimension of the quantised latent
    epochs: int = 40                     # total training epochs, curriculum stages included
    batch_size: int = 512                # items per step
    lr: float = 1e-3                     # Adam learning rate
    beta: float = 0.25                   # commitment loss weight
    curriculum: bool = True              # add levels one at a time (False: all levels from the start)
    epochs_per_level: int = 6            # most epochs a level trains before the next one is added
    min_epochs_per_level: int = 3        # fewest epochs before a plateau may add the next level
    plateau_tol: float = 0.01            # relative epoch-to-epoch loss improvement below which a level has plateaued
    kmeans_init: bool = True             # initialise each level by k-means on its residuals (False: random)
    kmeans_iters: int = 20               # Lloyd iterations of that k-means
    reinit_dead: bool = True             # re-initialise rarely used codes after every epoch
    dead_threshold: int = 1              # a code used by fewer items than this in an epoch is dead
    entropy_weight: float = 0.1          # weight of the batch-mean soft-assignment entropy term (0 = off)
    entropy_temperature: float = 0.1     # softmax temperature, relative to the batch's mean squared distance


@dataclass
class CLVAEResult:
    encoder: MLP
    decoder: MLP
    codebooks: torch.Tensor           # [L, K, latent_dim]
    history: list[dict]               # one entry per epoch: active levels, losses, used codes, re-initialised codes


def check_config(cfg: CLVAEConfig, levels: int) -> None:
    if cfg.curriculum and cfg.epochs <= (levels - 1) * cfg.epochs_per_level:
        raise UserError(f"clvae.epochs={cfg.epochs} leaves no epoch with all {levels} levels: the curriculum may "
                        f"spend up to {(levels - 1) * cfg.epochs_per_level} epochs (epochs_per_level="
                        f"{cfg.epochs_per_level}) before the last level is added")
    if cfg.min_epochs_per_level > cfg.epochs_per_level:
        raise UserError("clvae.min_epochs_per_level must not exceed clvae.epochs_per_level")


def quantize(z: torch.Tensor, codebooks: torch.Tensor, active: int, cfg: CLVAEConfig):
    """Residual-quantise ``z`` with the first ``active`` levels.

    Returns the straight-through quantised latent, the codebook + commitment loss and the entropy deficit
    ``sum_l (log K - H(mean_batch softmax(-d_l / T)))``, which is 0 when the batch spreads evenly over codes.
    """
    r = z
    quantised = torch.zeros_like(z)
    q_loss = z.new_zeros(())
    entropy_deficit = z.new_zeros(())
    k = codebooks.shape[1]
    for level in range(active):
        cb = codebooks[level]
        d = squared_distances(r, cb)
        q = cb[d.argmin(1)]
        q_loss = q_loss + (q - r.detach()).pow(2).sum(-1).mean() + cfg.beta * (r - q.detach()).pow(2).sum(-1).mean()
        if cfg.entropy_weight > 0:
            p = F.softmax(-d / (cfg.entropy_temperature * d.detach().mean().clamp_min(1e-12)), dim=1).mean(0)
            entropy_deficit = entropy_deficit + math.log(k) + (p * torch.log(p.clamp_min(1e-12))).sum()
        quantised = quantised + q
        r = r - q
    return z + (quantised - z).detach(), q_loss, entropy_deficit


@torch.no_grad()
def level_residuals(encoder: MLP, codebooks: torch.Tensor, x: torch.Tensor, active: int):
    """Codes [N, active] of all items and the residual each level quantised, [active, N, latent]."""
    z = encoder(x)
    codes = residual_codes(z, codebooks[:active])
    residuals = torch.empty(active, *z.shape)
    r = z
    for level in range(active):
        residuals[level] = r
        r = r - codebooks[level, codes[:, level]]
    return codes, residuals


@torch.no_grad()
def reinit_dead_codes(codebooks: torch.Tensor, codes: torch.Tensor, residuals: torch.Tensor, threshold: int,
                      generator: torch.Generator, optimizer: torch.optim.Optimizer) -> list[int]:
    """Move codes used by fewer than ``threshold`` items onto badly served residuals; count per level.

    The Adam moments of a moved code are cleared, so its first steps are not driven by its old history.
    """
    k = codebooks.shape[1]
    moved = []
    state = optimizer.state.get(codebooks, {})
    for level in range(codes.shape[1]):
        counts = torch.bincount(codes[:, level], minlength=k)
        dead = torch.nonzero(counts < threshold).squeeze(1)
        moved.append(len(dead))
        if not len(dead):
            continue
        r = residuals[level]
        error = (r - codebooks[level, codes[:, level]]).pow(2).sum(-1)
        weights = error if error.sum() > 0 else torch.ones_like(error)
        picks = torch.multinomial(weights, len(dead), replacement=len(dead) > len(r), generator=generator)
        codebooks[level, dead] = r[picks]
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                state[key][level, dead] = 0
    return moved


@torch.no_grad()
def init_level(codebooks: torch.Tensor, level: int, residuals: torch.Tensor, cfg: CLVAEConfig, seed: int) -> None:
    codebooks[level] = kmeans(residuals, codebooks.shape[1], iters=cfg.kmeans_iters, seed=seed + 1000 * level)


def train_clvae(x: torch.Tensor, levels: int, codebook_size: int, cfg: CLVAEConfig, seed: int = 0,
                progress: bool = True) -> CLVAEResult:
    """Train on normalised embeddings ``x`` [N, D] (float32). Bit-for-bit repeatable on CPU for a given seed
    under torch's deterministic algorithms, which :func:`recbase.tokenizer.train.train_tokenizer` turns on."""
    check_config(cfg, levels)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    n, dim = x.shape
    encoder = MLP([dim, *cfg.hidden_dims, cfg.latent_dim])
    decoder = MLP([cfg.latent_dim, *reversed(cfg.hidden_dims), dim])
    # nn.Embedding's default range: the classic VQ-VAE start, used when k-means initialisation is off.
    codebooks = torch.nn.Parameter(torch.empty(levels, codebook_size, cfg.latent_dim).uniform_(
        -1.0 / codebook_size, 1.0 / codebook_size, generator=gen))
    optimizer = torch.optim.Adam([*encoder.parameters(), *decoder.parameters(), codebooks], lr=cfg.lr)

    active = 1 if cfg.curriculum else levels
    if cfg.kmeans_init:
        for level in range(active):
            _, residuals = level_residuals(encoder, codebooks, x, level + 1)
            init_level(codebooks.data, level, residuals[level], cfg, seed)

    history: list[dict] = []
    epochs_at_level = 0
    start = time.perf_counter()
    bar = tqdm(range(cfg.epochs), desc="clvae", unit="epoch", disable=not progress)
    for epoch in bar:
        encoder.train()
        decoder.train()
        sums = torch.zeros(4)
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n, cfg.batch_size):
            xb = x[perm[i:i + cfg.batch_size]]
            z_hat, q_loss, ent = quantize(encoder(xb), codebooks, active, cfg)
            recon = (decoder(z_hat) - xb).pow(2).sum(-1).mean()
            loss = recon + q_loss + cfg.entropy_weight * ent
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            sums += torch.tensor([loss.item(), recon.item(), q_loss.item(), ent.item()]) * len(xb)
        encoder.eval()
        decoder.eval()
        means = (sums / n).tolist()
        codes, residuals = level_residuals(encoder, codebooks.data, x, active)
        used = [int(torch.unique(codes[:, level]).numel()) for level in range(active)]
        moved = (reinit_dead_codes(codebooks.data, codes, residuals, cfg.dead_threshold, gen, optimizer)
                 if cfg.reinit_dead else [0] * active)
        history.append({"epoch": epoch, "active_levels": active, "loss": means[0], "recon": means[1],
                        "quant": means[2], "entropy_deficit": means[3], "used_codes": used, "reinitialised": moved})
        bar.set_postfix(levels=active, loss=f"{means[0]:.4f}", used=used[0])
        epochs_at_level += 1
        if cfg.curriculum and active < levels and plateaued(history, epochs_at_level, cfg):
            active += 1
            epochs_at_level = 0
            if cfg.kmeans_init:
                _, residuals = level_residuals(encoder, codebooks.data, x, active)
                init_level(codebooks.data, active - 1, residuals[active - 1], cfg, seed)
    elapsed = time.perf_counter() - start
    log.info("clvae: %d epochs on %d items in %.1fs (%.0f items/s)", cfg.epochs, n, elapsed,
             cfg.epochs * n / max(elapsed, 1e-9))
    return CLVAEResult(encoder.eval(), decoder.eval(), codebooks.data.clone(), history)


def plateaued(history: list[dict], epochs_at_level: int, cfg: CLVAEConfig) -> bool:
    """Whether the current level is done: ``epochs_per_level`` reached, or the loss stopped improving."""
    if epochs_at_level >= cfg.epochs_per_level:
        return True
    if epochs_at_level < max(cfg.min_epochs_per_level, 2):
        return False
    prev, cur = history[-2]["loss"], history[-1]["loss"]
    return (prev - cur) / max(abs(prev), 1e-12) < cfg.plateau_tol
