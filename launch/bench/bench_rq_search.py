"""Benchmark ``rq_search``: the PyTorch reference against the Triton kernel, measured in the same run.

    python launch/bench/bench_rq_search.py            # GPU: N=1M, D=256, K=2048, L=4; CPU: a small case
    python launch/bench/bench_rq_search.py --n 65536 --d 768 --k 2048 --levels 4 --dtype bf16

On a GPU both backends run on the same inputs and the codes are compared. On CPU the reference is timed, and
the Triton kernel runs under the Triton interpreter on ``--interpret-rows`` rows as a correctness check (its time
says nothing about GPU speed). Bytes are the algorithmic minimum (rows and codebooks read once, codes written);
FLOPs are the distance dot products, 2*N*K*D*L.
"""
from __future__ import annotations

import argparse
import sys

from kernels.testing import enable_interpreter

TRITON_HERE = enable_interpreter()  # before triton is imported

import torch  # noqa: E402

from kernels.benchmarking import hardware_description, time_call, utc_now  # noqa: E402
from kernels.rq_search import rq_search  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def parse_args() -> argparse.Namespace:
    gpu = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1_000_000 if gpu else 8192, help="rows to encode")
    p.add_argument("--d", type=int, default=256, help="embedding dimension")
    p.add_argument("--k", type=int, default=2048 if gpu else 1024, help="codebook size")
    p.add_argument("--levels", type=int, default=4, help="residual levels")
    p.add_argument("--dtype", choices=DTYPES, default="fp32", help="input dtype (distances are always fp32)")
    p.add_argument("--reps", type=int, default=5 if gpu else 3, help="timed repetitions (median reported)")
    p.add_argument("--interpret-rows", type=int, default=64, help="CPU only: rows for the interpreter check")
    return p.parse_args()


def report(name: str, seconds: float, n: int, d: int, k: int, levels: int, itemsize: int) -> None:
    flops = 2.0 * n * k * d * levels
    nbytes = n * d * itemsize + levels * k * d * itemsize + n * levels * 8
    print(
        f"{name:<28} {seconds * 1e3:10.2f} ms  {nbytes / seconds / 1e9:9.2f} GB/s  "
        f"{flops / seconds / 1e12:8.3f} TFLOP/s  {n / seconds:14,.0f} rows/s"
    )


def main() -> int:
    args = parse_args()
    dtype = DTYPES[args.dtype]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(args.n, args.d, generator=g, device=device).to(dtype)
    codebooks = torch.randn(args.levels, args.k, args.d, generator=g, device=device).to(dtype)
    print(f"# rq_search benchmark, {utc_now()}")
    print(f"# hardware: {hardware_description()}")
    print(f"# command: python {' '.join(sys.argv)}")
    print(f"# N={args.n} D={args.d} K={args.k} L={args.levels} dtype={args.dtype}")
    shape = (args.n, args.d, args.k, args.levels, dtype.itemsize)

    ref_time = time_call(lambda: rq_search(x, codebooks, backend="pytorch"), device, reps=args.reps)
    report(f"pytorch reference ({device.type})", ref_time, *shape)
    want = rq_search(x, codebooks, backend="pytorch")
    if device.type == "cuda":
        kernel_time = time_call(lambda: rq_search(x, codebooks, backend="triton"), device, reps=args.reps)
        report("triton kernel (cuda)", kernel_time, *shape)
        got = rq_search(x, codebooks, backend="triton")
        print(f"speedup over reference: {ref_time / kernel_time:.2f}x")
    elif TRITON_HERE and args.interpret_rows > 0:
        rows = min(args.interpret_rows, args.n)
        x, want = x[:rows], want[:rows]
        interp_time = time_call(lambda: rq_search(x, codebooks, backend="triton"), device, warmup=0, reps=1)
        report("triton interpreter (cpu)", interp_time, rows, *shape[1:])
        got = rq_search(x, codebooks, backend="triton")
    else:
        return 0
    agree = (got == want).all(dim=1).float().mean().item()
    print(f"rows whose codes equal the reference: {agree * 100:.3f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
