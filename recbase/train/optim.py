"""AdamW parameter groups and the learning-rate schedule (linear warm-up, then cosine to a floor)."""
from __future__ import annotations

import math

from torch import nn

from recbase.train.config import OptimConfig


def param_groups(model: nn.Module, weight_decay: float, lr_scales: dict[nn.Module, tuple[float, float]] | None = None
                 ) -> list[dict]:
    """Decay only weight matrices: norms, biases and embeddings are left alone (decaying them only hurts).

    ``lr_scales`` maps a sub-module to ``(base lr, multiplier)``: its parameters get groups of their own at that
    learning rate (the schedule still scales every group alike).
    """
    special = {id(p): base * scale for m, (base, scale) in (lr_scales or {}).items() for p in m.parameters()}
    groups: dict[tuple[bool, float | None], list] = {}
    seen = set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if id(p) in seen or not p.requires_grad:
                continue
            seen.add(id(p))
            ndim = len(getattr(p, "ds_shape", p.shape))
            decayed = not (ndim < 2 or isinstance(module, nn.Embedding))
            groups.setdefault((decayed, special.get(id(p))), []).append(p)
    out = []
    for decayed in (True, False):
        for (d, lr), params in groups.items():
            if d == decayed:
                out.append({"params": params, "weight_decay": weight_decay if d else 0.0,
                            **({"lr": lr} if lr is not None else {})})
    return out


def lr_factor(step: int, cfg: OptimConfig) -> float:
    """Multiplier of ``cfg.lr`` before optimizer step ``step`` (0-based)."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    decay_steps = max(1, cfg.max_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / decay_steps)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
