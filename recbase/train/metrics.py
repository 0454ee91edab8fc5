"""Training metrics to three places at once: a line on stdout, ``metrics.jsonl`` and TensorBoard events.

Only rank 0 writes. ``metrics.jsonl`` is append-only, one JSON object per line, flushed at every record, so a
killed run keeps every line it logged; a resumed run appends (steps after the checkpoint appear twice, the
later record being the resumed one).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from tqdm import tqdm


def _fmt(key: str, value) -> str:
    if value is None:
        return f"{key}=n/a"
    if isinstance(value, float):
        if key == "mfu":
            return f"{key}={100 * value:.2f}%"
        if key.endswith("per_s"):
            return f"{key}={value:,.0f}"
        return f"{key}={value:.4g}" if abs(value) < 1e4 else f"{key}={value:,.0f}"
    return f"{key}={value}"


class MetricsLogger:
    def __init__(self, log_dir: str | Path, enabled: bool, tensorboard: bool):
        self.enabled = enabled
        self._jsonl = None
        self._tb = None
        if not enabled:
            return
        log_dir = Path(log_dir)
        log_dir.mkdir(parents=True, exist_ok=True)
        self.path = log_dir / "metrics.jsonl"
        self._jsonl = self.path.open("a", encoding="utf-8")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self._tb = SummaryWriter(str(log_dir / "tensorboard"))

    def log(self, step: int, kind: str, values: dict) -> None:
        """Record ``values`` (numbers, or None for "not available") for optimizer step ``step``."""
        if not self.enabled:
            return
        record = {"step": step, "kind": kind, **values}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        tqdm.write(f"[{kind} step {step}] " + " ".join(_fmt(k, v) for k, v in values.items()))
        if self._tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                    self._tb.add_scalar(f"{kind}/{k}", v, step)
            self._tb.flush()

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(path: str | Path, kind: str = "train") -> dict[int, dict]:
    """The last record of each step of ``kind`` in a ``metrics.jsonl`` (a resumed run's records win)."""
    out: dict[int, dict] = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        if rec.get("kind") == kind:
            out[rec["step"]] = rec
    return dict(sorted(out.items()))
