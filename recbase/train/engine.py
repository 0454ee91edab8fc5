"""Everything DeepSpeed-specific, in one place: process setup, the ZeRO config, the engine, and saving and
restoring the engine's state (the checkpoint folder layout, its manifest and consolidation are in
:mod:`recbase.train.checkpoint`).

The rest of ``recbase.train`` sees a model, a ``gather`` context for partitioned parameters, and the functions
below; swapping the parallel backend means rewriting this file only.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import socket
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from recbase.errors import UserError
from recbase.io import atomic_write_text
from recbase.train import checkpoint as ckpt
from recbase.train.config import TrainConfig


@dataclass
class Runtime:
    """Where this process sits in the job."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    backend: str
    tensor_parallel: int = 1

    @property
    def dp_world(self) -> int:
        return self.world_size // self.tensor_parallel

    @property
    def dp_rank(self) -> int:
        """Consecutive ranks form a tensor-parallel group and read the same batches."""
        return self.rank // self.tensor_parallel

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def default_dist_env() -> None:
    """A plain ``python launch/pretrain.py`` is one process: give it the variables a launcher would set
    (without them DeepSpeed looks for MPI)."""
    if "WORLD_SIZE" in os.environ:
        return
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=os.environ.get("MASTER_PORT", str(_free_port())))


def setup_runtime(cfg: TrainConfig) -> Runtime:
    """Initialise torch.distributed through DeepSpeed (nccl on CUDA, gloo on CPU)."""
    default_dist_env()
    import deepspeed

    # DeepSpeed's ZeRO-3 calls torch's deprecated reduce_scatter_tensor and all_gather_into_tensor; the user can
    # do nothing about it, and one warning per step would bury the training log.
    warnings.filterwarnings("ignore", message=r".*(reduce_scatter_tensor|all_gather_into_tensor).* is deprecated",
                            category=FutureWarning)

    cuda = torch.cuda.is_available()
    backend = cfg.deepspeed.comm_backend if cfg.deepspeed.comm_backend != "auto" else ("nccl" if cuda else "gloo")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if cuda:
        torch.cuda.set_device(local_rank)
    if not torch.distributed.is_initialized():
        # On CPU DeepSpeed prints "DeepSpeed <op> built successfully" for its shared-memory op on every start.
        with contextlib.redirect_stdout(io.StringIO()) as printed:
            deepspeed.init_distributed(dist_backend=backend)
        for line in printed.getvalue().splitlines():
            if not re.fullmatch(r"DeepSpeed \S+ built successfully", line):
                print(line)
    world = torch.distributed.get_world_size()
    tp = cfg.deepspeed.tensor_parallel
    if world % tp:
        raise UserError(f"world size {world} is not a multiple of deepspeed.tensor_parallel = {tp}")
    return Runtime(rank=torch.distributed.get_rank(), local_rank=local_rank, world_size=world,
                   device=torch.device("cuda", local_rank) if cuda else torch.device("cpu"), backend=backend,
                   tensor_parallel=tp)


def use_bf16(cfg: TrainConfig, device: torch.device) -> bool:
    return cfg.precision.dtype == "bf16" or (cfg.precision.dtype == "auto" and device.type == "cuda")


def deepspeed_config(cfg: TrainConfig, runtime: Runtime, hidden_size: int) -> dict[str, Any]:
    """The DeepSpeed JSON for this run; bucket sizes follow the hidden size (the rule behind HF's ``auto``)."""
    ds = cfg.deepspeed
    gas = cfg.gradient_accumulation_steps(runtime.dp_world)
    zero: dict[str, Any] = {
        "stage": ds.zero_stage,
        "reduce_bucket_size": ds.reduce_bucket_size or hidden_size * hidden_size,
        "overlap_comm": ds.overlap_comm if ds.overlap_comm is not None else runtime.device.type == "cuda",
        "contiguous_gradients": True,
    }
    if ds.zero_stage == 3:
        zero["stage3_prefetch_bucket_size"] = ds.prefetch_bucket_size or int(0.9 * hidden_size * hidden_size)
        zero["stage3_param_persistence_threshold"] = ds.param_persistence_threshold or 10 * hidden_size
        zero["stage3_gather_16bit_weights_on_model_save"] = False
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": runtime.device.type == "cuda"}
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": cfg.optim.micro_batch_size,
        "gradient_accumulation_steps": gas,
        "gradient_clipping": cfg.optim.grad_clip,
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }
    if use_bf16(cfg, runtime.device):
        config["bf16"] = {"enabled": True}
        config["data_types"] = {"grad_accum_dtype": "fp32"}
    if ds.tensor_parallel > 1:
        config["tensor_parallel"] = {"autotp_size": ds.tensor_parallel}
    return config


@contextlib.contextmanager
def gathered(params: list):
    """Make ZeRO-3-partitioned ``params`` whole; the values rank 0 writes are kept (and broadcast to the other
    ranks). A no-op for whole tensors."""
    partitioned = [p for p in params if hasattr(p, "ds_id")]
    if not partitioned:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(partitioned, modifier_rank=0):
        yield


@contextlib.contextmanager
def model_construction(ds_config: dict):
    """Keep an ``HfDeepSpeedConfig`` alive while the model is built, so ``transformers`` partitions a ZeRO-3
    model as it is created (``deepspeed.zero.Init``) instead of materialising it whole on every rank."""
    from transformers.integrations.deepspeed import HfDeepSpeedConfig, unset_hf_deepspeed_config

    if ds_config["zero_optimization"]["stage"] != 3:
        yield
        return
    holder = HfDeepSpeedConfig(ds_config)
    try:
        yield
    finally:
        del holder
        unset_hf_deepspeed_config()


def _optimizer(cfg: TrainConfig, groups: list[dict], device: torch.device):
    """torch AdamW on CPU (DeepSpeed's compiled Adams take ~45 s to build there), FusedAdam on CUDA,
    DeepSpeedCPUAdam when the optimizer states are offloaded."""
    o, kind = cfg.optim, cfg.deepspeed.optimizer
    kwargs = dict(lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps)
    if cfg.deepspeed.offload_optimizer:
        from deepspeed.ops.adam import DeepSpeedCPUAdam
        return DeepSpeedCPUAdam(groups, adamw_mode=True, **kwargs)
    if kind == "fused" or (kind == "auto" and device.type == "cuda"):
        from deepspeed.ops.adam import FusedAdam
        return FusedAdam(groups, adam_w_mode=True, **kwargs)
    return torch.optim.AdamW(groups, **kwargs)


def initialize(cfg: TrainConfig, runtime: Runtime, model: torch.nn.Module, groups: list[dict], lr_lambda,
               ds_config: dict):
    """Wrap ``model`` in a DeepSpeed engine with AdamW and a LambdaLR schedule stepped at every optimizer step."""
    import deepspeed

    optimizer = _optimizer(cfg, groups, runtime.device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                           config=ds_config)
    return engine


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a few numbers over all ranks (float64, so token counts stay exact)."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        torch.distributed.all_reduce(t)
    return t.tolist()


def all_reduce_min(value: int, device: torch.device) -> int:
    t = torch.tensor([value], dtype=torch.int64, device=device)
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MIN)
    return int(t.item())


def barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def shutdown() -> None:
    """Tear the process group down before exit."""
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def exit_launched_process(code: int) -> None:
    """End a process started by a launcher (WORLD_SIZE > 1) without running C++ static destructors.

    With several CPU processes, one of them sometimes aborts in interpreter teardown ("terminate called without
    an active exception", after all work and output are done), which a launcher reports as a failed job. Output
    is flushed and the process group is already gone, so nothing is lost by skipping that teardown. A lone
    process (tests calling the command in-process included) returns normally.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


# ----------------------------------------------------------------------------------------------- checkpoints

def save_checkpoint(engine, runtime: Runtime, ckpt_dir: str | Path, step: int, rank_state: dict,
                    meta: dict) -> Path:
    """Save on all ranks into a partial folder: DeepSpeed's model/optimizer/scheduler shards, this rank's loader
    position and RNG (``trainer_state_rank<r>.pt``) and ``recbase.json``; then rank 0 publishes it
    (:func:`recbase.train.checkpoint.publish`), so only a complete checkpoint ever becomes visible."""
    if runtime.is_main:
        ckpt.begin(ckpt_dir, step)
    barrier()
    partial = Path(ckpt_dir) / ckpt.partial_tag(step)
    torch.save(rank_state, partial / ckpt.RANK_STATE.format(rank=runtime.rank))
    if runtime.is_main:
        atomic_write_text(partial / ckpt.META_FILE, json.dumps(meta, indent=2) + "\n")
    engine.save_checkpoint(str(ckpt_dir), tag=partial.name, client_state={"step": step}, save_latest=False)
    if runtime.tensor_parallel > 1:
        # zero_to_fp32 cannot merge AutoTP shards: keep the whole weights too, gathered by DeepSpeed (a
        # collective: every rank takes part, rank 0 writes)
        state = engine._consolidated_16bit_state_dict()
        if runtime.is_main:
            torch.save(state, partial / ckpt.TP_CONSOLIDATED)
    barrier()
    folder = Path(ckpt_dir) / ckpt.checkpoint_tag(step)
    if runtime.is_main:
        ckpt.publish(ckpt_dir, step)
    barrier()
    return folder


def load_checkpoint(engine, runtime: Runtime, folder: Path) -> tuple[int, dict]:
    """Restore engine state (weights, optimizer, scheduler) and this rank's loader position and RNG, after rank 0
    checked every file against the checkpoint's manifest; all loads are weights-only."""
    rank_file = folder / ckpt.RANK_STATE.format(rank=runtime.rank)
    if not rank_file.exists():
        raise UserError(f"{rank_file} missing: resume needs the world size the checkpoint was saved with")
    error = ""
    if runtime.is_main:
        try:
            ckpt.verify(folder)
        except UserError as e:
            error = str(e)
    if all_reduce_min(0 if error else 1, runtime.device) == 0:
        raise UserError(error or f"{folder}: rank 0 refused this checkpoint (see its log)")
    with ckpt.weights_only_loads():
        _, client = engine.load_checkpoint(str(folder.parent), tag=folder.name, load_optimizer_states=True,
                                           load_lr_scheduler_states=True)
    if client is None:
        raise UserError(f"{folder}: DeepSpeed could not load this checkpoint")
    return int(client["step"]), ckpt.load_tensors(rank_file)
