"""Running the Triton kernels on a machine without a GPU, through the Triton interpreter.

Triton reads ``TRITON_INTERPRET`` when triton itself is imported (its language helpers are ``@jit`` functions) and
again when each kernel is decorated, so the interpreter can only be switched on in a process that has not
imported triton yet. A test module calls ``enable_interpreter()`` before importing any kernel; if triton was
already imported (by another test module, e.g. through ``transformers``), the kernel tests run in a fresh
process instead (``rerun_interpreted``).
"""
from __future__ import annotations

import os
import subprocess
import sys

import torch


def enable_interpreter() -> bool:
    """Make Triton kernels runnable in this process; True if they are (CUDA present, or interpreter on).

    On a CPU-only machine this sets ``TRITON_INTERPRET=1`` for the rest of the process when triton is not yet
    imported; harmless for other code, since nothing launches Triton kernels on CPU tensors otherwise.
    """
    if torch.cuda.is_available():
        return True
    if "triton" not in sys.modules:
        os.environ["TRITON_INTERPRET"] = "1"
    return os.environ.get("TRITON_INTERPRET") == "1" and interpreter_active()


def interpreter_active() -> bool:
    """True if the imported triton runs its ``@jit`` functions in the interpreter."""
    import triton.language.standard as standard
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(standard.argmin, InterpretedFunction)


def kernel_device() -> torch.device:
    """Where to put tensors for a Triton kernel: the GPU if there is one, else CPU for the interpreter."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def rerun_interpreted(test_file: str, keyword: str) -> subprocess.CompletedProcess:
    """Run ``pytest -k keyword test_file`` in a fresh process with the interpreter on; output captured."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test_file, "-k", keyword]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
