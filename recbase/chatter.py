"""Third-party messages that tell a recbase user nothing, dropped where they are emitted.

DeepSpeed is imported by ``transformers`` whenever a model loads, and on a machine without a GPU it logs a
warning that it "set the accelerator to CPU" on every import: on such a machine that is the only possibility, so
the message is dropped there and kept wherever a GPU is visible (where it would mean a detection failure).
"""
from __future__ import annotations

import logging

CPU_FALLBACK = "Setting accelerator to CPU."


class DeepSpeedCpuFallback(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not record.getMessage().startswith(CPU_FALLBACK):
            return True
        import torch

        return torch.cuda.device_count() > 0


def install() -> None:
    """Attach the filters to their loggers (before or after the libraries create them; idempotent)."""
    logger = logging.getLogger("DeepSpeed")
    if not any(isinstance(f, DeepSpeedCpuFallback) for f in logger.filters):
        logger.addFilter(DeepSpeedCpuFallback())
