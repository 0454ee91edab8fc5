"""rq_search: the PyTorch reference against the definition, the Triton kernel (interpreter on CPU) against the
reference, and the dispatcher's backend choice."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before any Triton kernel is decorated (read at decoration)

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels.pytorch.pt_rq_search import pt_rq_search
from kernels.rq_search import pick_backend, rq_search


def brute_force_codes(x, codebooks):
    """The definition, written out: full squared distances, first minimum per level."""
    r = x.double()
    codes = []
    for cb in codebooks.double():
        d = ((r[:, None, :] - cb[None, :, :]) ** 2).sum(-1)
        idx = d.argmin(1)
        codes.append(idx)
        r = r - cb[idx]
    return torch.stack(codes, 1), r


def test_reference_matches_definition():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(37, 50, generator=g)
    cb = torch.randn(3, 70, 50, generator=g)
    codes, residual = pt_rq_search(x, cb, return_residual=True)
    want_codes, want_residual = brute_force_codes(x, cb)
    assert codes.dtype == torch.long and codes.shape == (37, 3)
    assert torch.equal(codes, want_codes)
    torch.testing.assert_close(residual, want_residual.float(), atol=1e-4, rtol=1e-4)


def test_reference_ties_go_to_lowest_index():
    cb = torch.randn(2, 6, 4)
    cb[:, 4] = cb[:, 1]  # duplicated codeword: index 1 must win over 4
    x = cb[0, 1:2] + 0.0
    codes = pt_rq_search(x, cb)
    assert codes[0, 0].item() == 1


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
    with pytest.raises(ValueError, match="unknown kernel backend"):
        pick_backend(torch.device("cpu"), "cuda")
