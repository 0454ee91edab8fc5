"""rq_search: the PyTorch reference against the definition, the Triton kernel (the interpreter on CPU) against
the reference on shapes that are not multiples of the block sizes, and the dispatcher's backend choice."""
from kernels.testing import enable_interpreter, kernel_device, rerun_interpreted

TRITON_HERE = enable_interpreter()  # before any Triton kernel module is imported

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from kernels.dispatch import pick_backend  # noqa: E402
from kernels.pytorch.pt_rq_search import pt_rq_search  # noqa: E402
from kernels.rq_search import rq_search  # noqa: E402

# Without the interpreter in this process these run in a fresh one (test_triton_in_fresh_interpreter);
# tests/conftest.py then deselects them here.
needs_triton = pytest.mark.triton_interpreted
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def brute_force_codes(x, codebooks):
    """The definition, written out in float64: full squared distances, first minimum per level."""
    r = x.double()
    codes = []
    for cb in codebooks.double():
        idx = ((r[:, None, :] - cb[None, :, :]) ** 2).sum(-1).argmin(1)
        codes.append(idx)
        r = r - cb[idx]
    return torch.stack(codes, 1), r


def random_problem(n, d, k, levels, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g).to(dtype), torch.randn(levels, k, d, generator=g).to(dtype)


def integer_problem_with_ties(n, d, k, levels, dtype, seed=0):
    """Small-integer data, so every dot product is exact in fp32 whatever the summation order and equal
    scores are truly equal; codeword 3 is duplicated at 20 (same 32-wide tile), 40 and 65 (later tiles) on every
    level, and each row sits next to codeword 3 of level 0."""
    g = torch.Generator().manual_seed(seed)
    codebooks = torch.randint(-3, 4, (levels, k, d), generator=g).float()
    for dup in (20, 40, 65):
        codebooks[:, dup] = codebooks[:, 3]
    x = codebooks[0, 3] + torch.randint(-1, 2, (n, d), generator=g).float()
    return x.to(dtype), codebooks.to(dtype)


def rows_equal_up_to_near_ties(x, codebooks, got, want, rel=2e-5):
    """Rows whose codes are all equal. A row may differ only where the two codes' exact (float64) distances
    agree to within fp32 rounding of the scores (``rel`` of ``||r||^2 + max ||c||^2``); the row's residuals
    differ from then on, so its later levels are not compared."""
    r, cb = x.double(), codebooks.double()
    agree = torch.ones(x.shape[0], dtype=torch.bool)
    for level in range(cb.shape[0]):
        dist = ((r[:, None, :] - cb[level][None]) ** 2).sum(-1)
        gap = (dist.gather(1, got[:, level:level + 1]) - dist.gather(1, want[:, level:level + 1])).squeeze(1)
        scale = r.pow(2).sum(1) + cb[level].pow(2).sum(1).max()
        same = got[:, level] == want[:, level]
        assert (same | (gap.abs() <= rel * scale) | ~agree).all(), f"level {level}: codes differ beyond a tie"
        agree &= same
        r = r - cb[level, want[:, level]]
    return agree


def triton_vs_reference(x, codebooks, exact=True):
    """Codes equal (``exact``), or equal up to genuine near-ties; residuals equal up to fp32 rounding where the
    codes are equal."""
    from kernels.triton.triton_rq_search import triton_rq_search

    dev = kernel_device()
    got_codes, got_res = triton_rq_search(x.to(dev), codebooks.to(dev), return_residual=True)
    got_codes, got_res = got_codes.cpu(), got_res.cpu()
    want_codes, want_res = pt_rq_search(x, codebooks, return_residual=True)
    assert got_codes.dtype == torch.long and got_codes.shape == want_codes.shape
    if exact:
        assert torch.equal(got_codes, want_codes)
    rows = rows_equal_up_to_near_ties(x, codebooks, got_codes, want_codes)
    torch.testing.assert_close(got_res[rows], want_res[rows], atol=1e-4, rtol=1e-4)
    return got_codes


def test_reference_matches_definition():
    x, cb = random_problem(37, 50, 70, 3, torch.float32)
    codes, residual = pt_rq_search(x, cb, return_residual=True)
    want_codes, want_residual = brute_force_codes(x, cb)
    assert codes.dtype == torch.long and codes.shape == (37, 3)
    assert torch.equal(codes, want_codes)
    torch.testing.assert_close(residual, want_residual.float(), atol=1e-4, rtol=1e-4)


def test_reference_ties_go_to_lowest_index():
    x, cb = integer_problem_with_ties(5, 3, 70, 2, torch.float32)
    x = cb[0, 3].expand(5, -1).clone()
    codes, want = pt_rq_search(x, cb), brute_force_codes(x, cb)[0]
    assert (codes[:, 0] == 3).all() and torch.equal(codes, want)


@pytest.mark.parametrize(
    "x_shape, cb_shape, match",
    [((4,), (1, 3, 4), r"x must be \[N, D\]"), ((2, 4), (3, 4), r"codebooks must be \[L, K, D\]"),
     ((2, 4), (1, 3, 5), "does not match x dim 4")],
)
def test_bad_shapes_are_named(x_shape, cb_shape, match):
    with pytest.raises(ValueError, match=match):
        rq_search(torch.randn(x_shape), torch.randn(cb_shape))


def test_dispatcher_picks_reference_on_cpu():
    assert pick_backend(torch.device("cpu"), None) == "pytorch"
    assert pick_backend(torch.device("cuda", 0), None) == "triton"
    assert pick_backend(torch.device("cpu"), "triton") == "triton"
    x, cb = random_problem(9, 6, 5, 2, torch.float32)
    assert torch.equal(rq_search(x, cb), pt_rq_search(x, cb))
    with pytest.raises(ValueError, match="unknown kernel backend"):
        pick_backend(torch.device("cpu"), "cuda")


@needs_triton
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_triton_matches_reference(dtype):
    triton_vs_reference(*random_problem(37, 50, 70, 3, dtype))


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_triton_ties_match_reference(dtype):
    x, cb = integer_problem_with_ties(37, 50, 70, 3, dtype)
    codes = triton_vs_reference(x, cb)
    assert torch.equal(codes, brute_force_codes(x, cb)[0])  # exact data: the definition's first minimum


@needs_triton
def test_triton_single_level_through_dispatcher():
    x, cb = random_problem(37, 50, 70, 1, torch.bfloat16)
    dev = kernel_device()
    codes = rq_search(x.to(dev), cb.to(dev), backend="triton")
    assert torch.equal(codes.cpu(), pt_rq_search(x, cb))


@pytest.mark.parametrize("backend", ["pytorch", pytest.param("triton", marks=needs_triton)])
def test_no_rows_gives_no_codes(backend):
    dev = kernel_device() if backend == "triton" else torch.device("cpu")
    codes, residual = rq_search(torch.zeros(0, 50, device=dev), torch.zeros(3, 70, 50, device=dev),
                                backend=backend, return_residual=True)
    assert codes.shape == (0, 3) and codes.dtype == torch.long and residual.shape == (0, 50)


@needs_triton
def test_triton_rejects_too_wide_rows():
    from kernels.triton.triton_rq_search import MAX_D, triton_rq_search

    with pytest.raises(ValueError, match="exceeds the kernel's maximum"):
        triton_rq_search(torch.zeros(2, MAX_D + 1), torch.zeros(1, 2, MAX_D + 1))


@needs_triton
@settings(max_examples=6, deadline=None)
@given(
    n=st.integers(1, 70), d=st.integers(1, 130), k=st.integers(1, 100), levels=st.integers(1, 4),
    dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**16),
)
def test_triton_random_shapes(n, d, k, levels, dtype, seed):
    # Random draws may land on an fp32 near-tie, where the two summation orders can legitimately disagree.
    triton_vs_reference(*random_problem(n, d, k, levels, dtype, seed), exact=False)


@pytest.mark.triton_fresh_process
def test_triton_in_fresh_interpreter():
    done = rerun_interpreted(__file__, "triton and not fresh")
    assert done.returncode == 0, done.stdout + done.stderr
    assert " passed" in done.stdout and "skipped" not in done.stdout, done.stdout


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_triton_matches_reference_at_the_paper_size_on_gpu(dtype):
    """D=256, K=2048, L=4 (the paper's tokenizer) on 131,072 rows, both backends on the GPU: codes equal except at
    genuine fp32 near-ties (checked in float64 on the differing rows), and those are rare."""
    from kernels.triton.triton_rq_search import triton_rq_search

    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(131072, 256, device="cuda", generator=g).to(dtype)
    cb = torch.randn(4, 2048, 256, device="cuda", generator=g).to(dtype)
    got, want = triton_rq_search(x, cb), pt_rq_search(x, cb)
    differ = (got != want).any(1).nonzero().squeeze(1)
    assert len(differ) <= 1e-3 * len(x), f"{len(differ)} of {len(x)} rows differ"
    rows_equal_up_to_near_ties(x[differ].cpu(), cb.cpu(), got[differ].cpu(), want[differ].cpu())
