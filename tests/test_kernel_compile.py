"""The Triton kernels compile, ahead of time, to Hopper (sm_90) machine code with the ptxas bundled in triton.

The interpreter runs a kernel's Python body with NumPy, so it misses what only the compiler checks (types of
loop-carried values, layouts of ``tl.dot`` operands, shared-memory use). This compiles without a GPU: the test
starts a fresh process without ``TRITON_INTERPRET`` that runs this file as a script.
"""
import os
import subprocess
import sys

import pytest

RQ_SIGNATURE = {
    "x_ptr": "*{dt}", "cb_ptr": "*{dt}", "norms_ptr": "*fp32", "codes_ptr": "*i64", "res_ptr": "*fp32",
    "N": "i32", "K": "i32", "D": "i32", "stride_xn": "i32", "stride_xd": "i32", "stride_cl": "i32",
    "stride_ck": "i32", "stride_cd": "i32", "L": "constexpr", "BLOCK_D": "constexpr", "WRITE_RESIDUAL": "constexpr",
    "BLOCK_N": "constexpr", "BLOCK_K": "constexpr",
}
CE_SIGNATURE = {
    "logits_ptr": "*fp32", "labels_ptr": "*i64", "loss_ptr": "*fp32", "V": "i32", "stride_row": "i32",
    "ignore_index": "i32", "grad_scale": "fp32", "BLOCK_V": "constexpr",
}
SHARED_MEMORY_H100 = 227 * 1024  # bytes of shared memory a block may use on sm_90


def compile_kernels() -> None:
    """Compile rq_search (bf16 rows, the benchmark's tile shape) and the CE chunk step for sm_90."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler.compiler import ASTSource

    from kernels.triton.triton_fused_linear_ce import _ce_step_kernel
    from kernels.triton.triton_rq_search import _rq_search_kernel

    target = GPUTarget("cuda", 90, 32)
    signature = {k: v.format(dt="bf16") for k, v in RQ_SIGNATURE.items()}
    consts = {"L": 4, "BLOCK_D": 256, "WRITE_RESIDUAL": True, "BLOCK_N": 64, "BLOCK_K": 64}
    rq = triton.compile(ASTSource(_rq_search_kernel.fn, signature, consts), target=target,
                        options={"num_warps": 8, "num_stages": 2})
    ce = triton.compile(ASTSource(_ce_step_kernel, CE_SIGNATURE, {"BLOCK_V": 4096}), target=target,
                        options={"num_warps": 8})
    for name, kernel in (("rq_search", rq), ("ce_step", ce)):
        assert kernel.asm["cubin"], name
        assert kernel.metadata.shared <= SHARED_MEMORY_H100, (name, kernel.metadata.shared)
        print(name, "shared bytes", kernel.metadata.shared)


@pytest.mark.slow
def test_kernels_compile_for_sm90(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(TRITON_CACHE_DIR=str(tmp_path), TRITON_DEFAULT_FP_FUSION="1")
    done = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "rq_search shared bytes" in done.stdout and "ce_step shared bytes" in done.stdout


if __name__ == "__main__":
    compile_kernels()
