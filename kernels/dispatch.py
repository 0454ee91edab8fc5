"""Backend choice shared by the kernel dispatchers: Triton for CUDA tensors, the PyTorch reference elsewhere."""
from __future__ import annotations

import torch

BACKENDS = ("pytorch", "triton")


def pick_backend(device: torch.device, backend: str | None) -> str:
    """``backend`` if given (validated), else ``triton`` for CUDA tensors and ``pytorch`` otherwise."""
    if backend is None:
        return "triton" if device.type == "cuda" else "pytorch"
    if backend not in BACKENDS:
        raise ValueError(f"unknown kernel backend {backend!r}; expected one of {BACKENDS}")
    return backend
