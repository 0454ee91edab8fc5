"""Derived numbers: parameter count, training FLOPs per token, memory per ZeRO stage, device peaks and MFU.

All of them are computed from the config (parameters by building the model on the meta device), never typed in.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from recbase.train.model import count_parameters

# Dense bf16 tensor-core peaks in FLOP/s (vendor data sheets, without sparsity). Matched by substring of
# torch.cuda.get_device_name(); the first match wins, so the more specific names come first.
DEVICE_PEAK_FLOPS = (
    ("H100 PCIe", 756e12),
    ("H100", 989e12),   # SXM
    ("H200", 989e12),
    ("H800", 989e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("L40S", 362e12),
    ("A10G", 70e12),
)


@dataclass(frozen=True)
class ModelSize:
    parameters: int          # unique parameters (tied weights once)
    matmul_parameters: int   # weights of every Linear, the output projection included even when tied
    layers: int
    hidden: int
    vocab: int

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token: 6 per matmul weight (forward + backward) plus attention scores and values,
        12 * layers * hidden * seq_len (the PaLM appendix B count, full not causal, as torchtitan reports it)."""
        return 6.0 * self.matmul_parameters + 12.0 * self.layers * self.hidden * seq_len


def model_size(hf_config) -> ModelSize:
    """Build the model on the meta device (no memory) and count its parameters."""
    from transformers import Qwen2ForCausalLM

    with torch.device("meta"):
        model = Qwen2ForCausalLM(hf_config)
    matmul = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    return ModelSize(parameters=count_parameters(model.parameters()), matmul_parameters=matmul,
                     layers=hf_config.num_hidden_layers, hidden=hf_config.hidden_size, vocab=hf_config.vocab_size)


def peak_flops(device_name: str | None, configured_tflops: float | None = None) -> float | None:
    """Peak FLOP/s for MFU: the configured value, else the table entry for a CUDA device, else None (n/a)."""
    if configured_tflops:
        return configured_tflops * 1e12
    if not device_name:
        return None
    for key, peak in DEVICE_PEAK_FLOPS:
        if key.lower() in device_name.lower():
            return peak
    return None


def mfu(flops_per_token: float, tokens_per_s: float, world_size: int, peak: float | None) -> float | None:
    """Model FLOPs utilisation of the whole job, or None where no peak is known."""
    if peak is None or tokens_per_s <= 0:
        return None
    return flops_per_token * tokens_per_s / (peak * world_size)


def memory_per_rank(size: ModelSize, world_size: int, micro_batch_size: int, seq_len: int, mixed_precision: bool,
                    activation_checkpointing: bool) -> dict[str, float]:
    """Bytes per rank for each ZeRO stage: model states (ZeRO paper, section 3) plus activations.

    Model states per parameter: mixed precision keeps 2 (weights) + 2 (grads) + 12 (fp32 master, Adam m and v);
    fp32 keeps 4 + 4 + 8. Stage 1 shards the optimizer states, stage 2 also the gradients, stage 3 also the
    weights. Activations per layer follow Korthikanti et al. (2022) with a fused attention kernel:
    34 * tokens * hidden bytes in 16-bit (doubled for fp32), or only the layer input when checkpointing; the
    logits add tokens * vocab * 4 bytes (float32 for the loss).
    """
    n, p = world_size, size.parameters
    weights, grads, optim = (2, 2, 12) if mixed_precision else (4, 4, 8)
    states = {
        0: (weights + grads + optim) * p,
        1: (weights + grads) * p + optim * p / n,
        2: weights * p + (grads + optim) * p / n,
        3: (weights + grads + optim) * p / n,
    }
    tokens = micro_batch_size * seq_len
    scale = 1 if mixed_precision else 2
    per_layer = (2 if activation_checkpointing else 34) * tokens * size.hidden * scale
    activations = size.layers * per_layer + tokens * size.vocab * 4
    return {f"zero{stage}": float(b + activations) for stage, b in states.items()} | {"activations": float(activations)}
