"""Timed optimizer steps of a built :class:`~recbase.train.loop.Trainer`, for the pretraining benchmarks.

The loop logs throughput as it trains; the benchmarks need it without checkpoints, validation or export, after
untimed warm-up steps (the first steps compile kernels, autotune and grow the allocator), and with the peak
device memory of the timed steps.
"""
from __future__ import annotations

import time

import torch

from recbase.train.estimates import mfu


def measure_steps(trainer, steps: int, warmup: int) -> dict:
    """Run ``warmup`` then ``steps`` optimizer steps; tokens/s over all positions (padding included: what the
    hardware computes), label tokens/s (what trains the model), MFU, seconds per step, peak memory, losses."""
    cfg, rt = trainer.cfg, trainer.runtime
    cuda = rt.device.type == "cuda"
    data = iter(trainer.loader)
    positions = trainer.gas * cfg.optim.micro_batch_size * cfg.data.seq_len * rt.dp_world
    labels, losses, elapsed = 0.0, [], 0.0
    for step in range(warmup + steps):
        batches = [next(data) for _ in range(trainer.gas)]
        if step == warmup and cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(rt.device)
        start = time.perf_counter()
        out = trainer.train_step(batches)   # .item() of the loss synchronises the device
        if step >= warmup:
            elapsed += time.perf_counter() - start
            labels += out["label_tokens"]
        losses.append(out["loss"])
    tokens_per_s = positions * steps / elapsed
    return {"tokens_per_s": tokens_per_s, "label_tokens_per_s": labels / elapsed,
            "fill": labels / (positions * steps), "s_per_step": elapsed / steps,
            "mfu": mfu(trainer.size.flops_per_token(cfg.data.seq_len), tokens_per_s, rt.world_size, trainer.peak),
            "peak_memory_gib": torch.cuda.max_memory_allocated(rt.device) / 2**30 if cuda else None,
            "first_loss": losses[0], "last_loss": losses[-1], "tokens_per_step": positions}
