"""``--dry-run``: the resolved config, the world layout and the derived sizes of a run, without training."""
from __future__ import annotations

import json
import os
from pathlib import Path

from recbase.config import to_dict
from recbase.data.shard_format import MANIFEST, read_manifest
from recbase.train.config import TrainConfig
from recbase.train.estimates import memory_per_rank, model_size
from recbase.train.model import qwen2_config
from recbase.vocab import Vocab

PAPER_VOCAB = Vocab(levels=4, codebook_size=2048)   # the paper's L=4, K=2048 (used when no manifest exists)


def vocab_for(cfg: TrainConfig) -> tuple[int, str]:
    """The model vocabulary size and where it came from: config, shard manifest, or the paper layout."""
    if cfg.model.vocab_size:
        return cfg.model.vocab_size, "set in the config (model.vocab_size)"
    manifest = Path(cfg.data.shards) / MANIFEST
    if manifest.exists():
        vocab = Vocab.from_dict(read_manifest(cfg.data.shards)["vocab"])
        return vocab.model_vocab_size, (f"shard manifest found at {manifest}: L={vocab.levels} "
                                        f"K={vocab.codebook_size}")
    return PAPER_VOCAB.model_vocab_size, (f"the paper's default L=4 K=2048, because no shards were found at "
                                          f"{manifest.parent}; set data.shards=FOLDER (the demo writes "
                                          f"demo_out/shards/demo)")


def describe(cfg: TrainConfig, world_size: int | None = None, gpu: bool | None = None,
             verbose: bool = False) -> str:
    """The dry-run report: the summary first, then (``verbose``) the resolved config. ``world_size`` defaults to
    the launcher's WORLD_SIZE (1 without a launcher)."""
    world = world_size or int(os.environ.get("WORLD_SIZE", 1))
    gpu = cfg.precision.dtype == "bf16" or (cfg.precision.dtype == "auto" and gpu is not False)
    ds = cfg.deepspeed
    dp = world // ds.tensor_parallel
    vocab_size, vocab_source = vocab_for(cfg)
    size = model_size(qwen2_config(cfg.model, vocab_size))
    gas = cfg.gradient_accumulation_steps(dp)
    lines = [f"world: {world} ranks = data-parallel {dp} x tensor-parallel {ds.tensor_parallel}; "
             f"ZeRO stage {ds.zero_stage}",
             f"batch: {cfg.optim.micro_batch_size} rows x {cfg.data.seq_len} tokens x {gas} accumulation steps x "
             f"{dp} ranks = {cfg.optim.global_batch_tokens:,} tokens per step",
             f"vocabulary: {vocab_size} ({vocab_source})",
             f"parameters: {size.parameters}",
             f"flops per token: {size.flops_per_token(cfg.data.seq_len):.4g} "
             f"(6 x {size.matmul_parameters:,} matmul weights + attention at seq_len {cfg.data.seq_len})",
             f"memory per rank ({'bf16 mixed precision' if gpu else 'fp32'}, {dp} data-parallel ranks, "
             f"activation checkpointing {'on' if cfg.model.activation_checkpointing else 'off'}):"]
    mem = memory_per_rank(size, dp, cfg.optim.micro_batch_size, cfg.data.seq_len, gpu,
                          cfg.model.activation_checkpointing)
    for stage in range(4):
        lines.append(f"  zero{stage}: {mem[f'zero{stage}'] / 2**30:,.2f} GiB")
    lines.append(f"  (of which activations: {mem['activations'] / 2**30:,.2f} GiB)")
    lines += ["resolved config:", json.dumps(to_dict(cfg), indent=2)] if verbose else \
        ["(the resolved config: --verbose)"]
    return "\n".join(lines)
