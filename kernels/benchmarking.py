"""Timing and hardware description shared by the kernel benchmarks in ``launch/bench/``."""
from __future__ import annotations

import platform
import time
from datetime import datetime, timezone
from typing import Callable

import torch


def hardware_description() -> str:
    """GPU name if one is present, else the CPU model and core count, plus the library versions."""
    if torch.cuda.is_available():
        device = torch.cuda.get_device_name()
    else:
        device = f"CPU {_cpu_model()} ({torch.get_num_threads()} threads)"
    import triton

    return f"{device}; torch {torch.__version__}, triton {triton.__version__}"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def cdist_codes(z: torch.Tensor, codebooks: torch.Tensor, row_chunk: int = 65536) -> torch.Tensor:
    """Baseline of ``rq_search``: greedy residual search with ``torch.cdist`` and argmin, level by level
    (``row_chunk`` rows at a time, so the [rows, K] distance matrix stays bounded)."""
    out = []
    for start in range(0, z.shape[0], row_chunk):
        codes, r = [], z[start:start + row_chunk]
        for cb in codebooks:
            idx = torch.cdist(r, cb).argmin(1)
            codes.append(idx)
            r = r - cb[idx]
        out.append(torch.stack(codes, 1))
    return torch.cat(out) if out else torch.zeros(0, codebooks.shape[0], dtype=torch.long, device=z.device)


def time_call(fn: Callable[[], object], device: torch.device, warmup: int = 1, reps: int = 3) -> float:
    """Median wall seconds of ``fn()`` (synchronising the GPU around each call when on CUDA)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]
