"""fused_linear_cross_entropy: loss and gradients equal to ``F.cross_entropy(hidden @ weight.T, labels)``, for the
PyTorch reference and for the Triton chunk step (the interpreter on CPU)."""
from kernels.testing import enable_interpreter, kernel_device, rerun_interpreted

TRITON_HERE = enable_interpreter()  # before any Triton kernel module is imported


import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from kernels.fused_linear_ce import fused_linear_cross_entropy  # noqa: E402
from kernels.pytorch.pt_fused_linear_ce import pt_ce_chunk_step  # noqa: E402

# Without the interpreter in this process these run in a fresh one (test_triton_in_fresh_interpreter);
# tests/conftest.py then deselects them here.
needs_triton = pytest.mark.triton_interpreted
T, H, V = 53, 24, 301  # odd on purpose: no chunk or tile size divides them


def problem(dtype=torch.float32, device="cpu", seed=0, ignored_every=5):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(T, H, generator=g).to(dtype).to(device).requires_grad_()
    weight = (0.3 * torch.randn(V, H, generator=g)).to(dtype).to(device).requires_grad_()
    labels = torch.randint(0, V, (T,), generator=g)
    labels[::ignored_every] = -100
    return hidden, weight, labels.to(device)


def loss_and_grads(loss_fn, hidden, weight, labels, reduction):
    """Loss and gradients under a non-unit upstream gradient, so the backward scaling is exercised too."""
    loss = loss_fn(hidden, weight, labels, reduction)
    grad_hidden, grad_weight = torch.autograd.grad(loss * 1.7, (hidden, weight))
    return loss.detach(), grad_hidden, grad_weight


def unfused(hidden, weight, labels, reduction):
    return F.cross_entropy(hidden.float() @ weight.float().T, labels, reduction=reduction)


def assert_matches_unfused(backend, reduction, chunk_size, dtype=torch.float32, device="cpu", tol=1e-5):
    args = problem(dtype, device)

    def fused(h, w, y, red):
        return fused_linear_cross_entropy(h, w, y, reduction=red, chunk_size=chunk_size, backend=backend)

    got = loss_and_grads(fused, *args, reduction)
    want = loss_and_grads(unfused, *args, reduction)
    assert [g.dtype for g in got] == [torch.float32, dtype, dtype]  # fp32 loss, gradients in the inputs' dtype
    for g, w in zip(got, want):
        torch.testing.assert_close(g.float(), w.float(), atol=tol, rtol=tol)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("chunk_size", [7, 1024])
def test_reference_matches_unfused(reduction, chunk_size):
    assert_matches_unfused("pytorch", reduction, chunk_size)


def test_reference_bf16_matches_unfused_on_the_same_values():
    assert_matches_unfused("pytorch", "mean", 16, dtype=torch.bfloat16, tol=2e-2)


def test_frozen_weight_and_default_backend():
    hidden, weight, labels = problem()
    weight = weight.detach()
    loss = fused_linear_cross_entropy(hidden, weight, labels, chunk_size=10)
    (grad,) = torch.autograd.grad(loss, hidden)
    (want,) = torch.autograd.grad(F.cross_entropy(hidden @ weight.T, labels), hidden)
    torch.testing.assert_close(grad, want, atol=1e-6, rtol=1e-5)


def test_all_labels_ignored_is_nan_for_mean_and_zero_for_sum():
    hidden, weight, labels = problem()
    labels = torch.full_like(labels, -100)
    assert torch.isnan(fused_linear_cross_entropy(hidden, weight, labels)).item()
    assert fused_linear_cross_entropy(hidden, weight, labels, reduction="sum").item() == 0.0
    assert torch.isnan(F.cross_entropy(hidden @ weight.T, labels)).item()


def test_bad_inputs_are_named():
    hidden, weight, labels = problem()
    labels = labels.clone()
    labels[9] = V
    with pytest.raises(ValueError, match=rf"labels\[9\]={V} is outside the vocabulary \[0, {V}\)"):
        fused_linear_cross_entropy(hidden, weight, labels)
    with pytest.raises(ValueError, match="reduction must be one of"):
        fused_linear_cross_entropy(hidden, weight, labels.clamp(max=V - 1), reduction="none")
    with pytest.raises(ValueError, match="hidden dim 24 != weight dim 23"):
        fused_linear_cross_entropy(hidden, weight[:, :23], labels.clamp(max=V - 1))


@needs_triton
@pytest.mark.parametrize("block_v", [64, None], ids=["tiled", "one-tile"])
def test_triton_chunk_step_matches_reference(block_v):
    from kernels.triton.triton_fused_linear_ce import triton_ce_chunk_step

    g = torch.Generator().manual_seed(1)
    logits = 4 * torch.randn(19, V, generator=g)
    labels = torch.randint(0, V, (19,), generator=g)
    labels[[0, 7]] = -100
    want_grad = logits.clone()
    want_loss = pt_ce_chunk_step(want_grad, labels, -100, 0.25)
    got_grad = logits.to(kernel_device())
    got_loss = triton_ce_chunk_step(got_grad, labels.to(kernel_device()), -100, 0.25, block_v=block_v)
    torch.testing.assert_close(got_loss.cpu(), want_loss, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_grad.cpu(), want_grad, atol=1e-6, rtol=1e-5)
    assert (got_grad[[0, 7]] == 0).all()


@needs_triton
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_triton_matches_unfused(reduction):
    assert_matches_unfused("triton", reduction, 16, device=kernel_device())


@pytest.mark.triton_fresh_process
def test_triton_in_fresh_interpreter():
    done = rerun_interpreted(__file__, "triton and not fresh")
    assert done.returncode == 0, done.stdout + done.stderr
    assert " passed" in done.stdout and "skipped" not in done.stdout, done.stdout


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_triton_matches_unfused_at_the_paper_head_on_gpu():
    """The 0.3B model's head (hidden 1024, the paper vocabulary rounded to 8,320) on 16,384 bf16 tokens: loss and
    gradients of the Triton chunk step equal the float32 unfused cross-entropy of the same bf16 values."""
    g = torch.Generator(device="cuda").manual_seed(0)
    hidden = torch.randn(16384, 1024, device="cuda", generator=g).to(torch.bfloat16).requires_grad_()
    weight = (0.02 * torch.randn(8320, 1024, device="cuda", generator=g)).to(torch.bfloat16).requires_grad_()
    labels = torch.randint(0, 8320, (16384,), device="cuda", generator=g)
    labels[::7] = -100

    def fused(h, w, y, red):
        return fused_linear_cross_entropy(h, w, y, reduction=red, chunk_size=4096, backend="triton")

    got = loss_and_grads(fused, hidden, weight, labels, "sum")
    want = loss_and_grads(unfused, hidden, weight, labels, "sum")
    torch.testing.assert_close(got[0], want[0], rtol=1e-4, atol=0)
    for g_, w_ in zip(got[1:], want[1:]):   # bf16 gradients: one bf16 rounding apart
        torch.testing.assert_close(g_.float(), w_.float(), rtol=2e-2, atol=1e-4)
