"""Shared fixtures, and the Triton interpreter tests' bookkeeping.

A kernel test module marked ``triton_interpreted`` runs its Triton tests in this process only when the interpreter
could be switched on here (its ``TRITON_HERE``); otherwise a fresh interpreter runs them (the module's
``test_triton_in_fresh_interpreter``, which passes or fails with them). Those tests are then deselected here,
not reported as skipped, and the summary says where they ran; likewise the fresh-interpreter test is deselected
when the tests already ran in this process.
"""
from __future__ import annotations

import pytest

_RAN_ELSEWHERE = "triton_ran_elsewhere"


def pytest_collection_modifyitems(config, items):
    keep, moved = [], []
    for item in items:
        here = getattr(getattr(item, "module", None), "TRITON_HERE", None)
        if here is None:
            keep.append(item)
        elif item.get_closest_marker("triton_interpreted") and not here:
            moved.append(item)
        elif item.get_closest_marker("triton_fresh_process") and here:
            moved.append(item)
        else:
            keep.append(item)
    if moved:
        config.hook.pytest_deselected(items=moved)
        items[:] = keep
        setattr(config, _RAN_ELSEWHERE, moved)


def pytest_terminal_summary(terminalreporter, config):
    moved = getattr(config, _RAN_ELSEWHERE, [])
    interpreted = [i for i in moved if i.get_closest_marker("triton_interpreted")]
    if interpreted:
        files = sorted({i.path.name for i in interpreted})
        terminalreporter.write_line(
            f"{len(interpreted)} Triton-interpreter tests ran in a fresh interpreter (triton was imported here "
            f"before the interpreter could be switched on): counted in test_triton_in_fresh_interpreter of "
            f"{', '.join(files)}")


@pytest.fixture(scope="session")
def recommend_world(tmp_path_factory):
    """A tokenizer, a model trained on a known cycle of news items, and the news catalog (tests/recommend_world)."""
    from recommend_world import build

    return build(tmp_path_factory.mktemp("recommend_world"))
