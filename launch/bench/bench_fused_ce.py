"""Benchmark ``fused_linear_cross_entropy`` against the unfused ``F.cross_entropy(hidden @ weight.T, labels)``:
time of forward + backward and the peak memory above the inputs, measured in the same run.

    python launch/bench/bench_fused_ce.py                      # CPU default: T=2048, H=256, V=16384
    python launch/bench/bench_fused_ce.py --tokens 16384 --hidden 1536 --vocab 8320 --dtype bf16   # GPU

On CPU each variant runs in a fresh process and its peak is the growth of the process's maximum resident set
(``ru_maxrss``) during one forward + backward; on a GPU it is ``torch.cuda.max_memory_allocated`` above the
inputs, and the Triton chunk step is measured too.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import sys

import torch
import torch.nn.functional as F

from kernels.benchmarking import hardware_description, time_call, utc_now
from kernels.fused_linear_ce import fused_linear_cross_entropy

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=2048, help="T, rows of hidden states")
    p.add_argument("--hidden", type=int, default=256, help="H, hidden size")
    p.add_argument("--vocab", type=int, default=16384, help="V, vocabulary size")
    p.add_argument("--chunk-size", type=int, default=512, help="rows of logits per chunk (fused variants)")
    p.add_argument("--dtype", choices=DTYPES, default="fp32", help="dtype of hidden states and weight")
    p.add_argument("--reps", type=int, default=3, help="timed repetitions (median reported)")
    return p.parse_args()


def make_step(variant: str, args: argparse.Namespace, device: torch.device):
    """Inputs plus a closure running one forward + backward of ``variant``."""
    g = torch.Generator(device=device).manual_seed(0)
    dtype = DTYPES[args.dtype]
    hidden = torch.randn(args.tokens, args.hidden, generator=g, device=device).to(dtype).requires_grad_()
    weight = (0.05 * torch.randn(args.vocab, args.hidden, generator=g, device=device)).to(dtype).requires_grad_()
    labels = torch.randint(0, args.vocab, (args.tokens,), generator=g, device=device)

    def step():
        if variant == "unfused":
            loss = F.cross_entropy((hidden @ weight.T).float(), labels)
        else:
            loss = fused_linear_cross_entropy(hidden, weight, labels, chunk_size=args.chunk_size, backend=variant)
        loss.backward()
        hidden.grad = weight.grad = None
        return loss

    return step


def measure_cpu(variant: str, args: argparse.Namespace, out: mp.Queue) -> None:
    """Run in a fresh process: the resident-set high-water mark grows only by this variant's step."""
    device = torch.device("cpu")
    step = make_step(variant, args, device)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    step()
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    out.put((time_call(step, device, warmup=0, reps=args.reps), peak_kib * 1024))


def measure_gpu(variant: str, args: argparse.Namespace) -> tuple[float, int]:
    device = torch.device("cuda")
    step = make_step(variant, args, device)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    peak = torch.cuda.max_memory_allocated() - base
    return time_call(step, device, warmup=1, reps=args.reps), peak


def main() -> int:
    args = parse_args()
    gpu = torch.cuda.is_available()
    variants = ["unfused", "pytorch"] + (["triton"] if gpu else [])
    print(f"# fused linear cross-entropy benchmark, {utc_now()}")
    print(f"# hardware: {hardware_description()}")
    print(f"# command: python {' '.join(sys.argv)}")
    print(f"# T={args.tokens} H={args.hidden} V={args.vocab} chunk={args.chunk_size} dtype={args.dtype}")
    flops = 6.0 * args.tokens * args.hidden * args.vocab  # forward matmul + two gradient matmuls
    results = {}
    for variant in variants:
        if gpu:
            results[variant] = measure_gpu(variant, args)
        else:
            queue = mp.get_context("spawn").Queue()
            proc = mp.get_context("spawn").Process(target=measure_cpu, args=(variant, args, queue))
            proc.start()
            results[variant] = queue.get()
            proc.join()
    base_time, base_peak = results["unfused"]
    for variant, (seconds, peak) in results.items():
        name = "unfused (logits in full)" if variant == "unfused" else f"fused, {variant} chunk step"
        print(
            f"{name:<28} {seconds * 1e3:10.1f} ms  {flops / seconds / 1e12:7.3f} TFLOP/s  "
            f"peak +{peak / 2**20:8.1f} MiB  ({base_time / seconds:.2f}x speed, {base_peak / max(peak, 1):.2f}x less memory)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
