"""Atomic file output: all or nothing under the final name, and the mode a plain open would give."""
from __future__ import annotations

import os
import stat

import pytest

from recbase.io import atomic_path, atomic_write_text, current_umask


@pytest.fixture
def umask():
    """Run the test under a given umask, restoring the caller's afterwards."""
    saved = os.umask(0o022)
    os.umask(saved)
    yield lambda mask: os.umask(mask)
    os.umask(saved)


@pytest.mark.parametrize("mask,mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_files_get_the_mode_of_the_umask(tmp_path, umask, mask, mode):
    umask(mask)
    assert current_umask() == mask
    atomic_write_text(tmp_path / "a.json", "{}")
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == mode
    plain = tmp_path / "plain"
    plain.write_text("x")
    assert stat.S_IMODE(plain.stat().st_mode) == mode


def test_a_failed_block_leaves_nothing(tmp_path):
    atomic_write_text(tmp_path / "a.json", "old")
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "a.json") as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert (tmp_path / "a.json").read_text() == "old" and sorted(os.listdir(tmp_path)) == ["a.json"]
