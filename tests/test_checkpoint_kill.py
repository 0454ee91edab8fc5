"""``kill -9`` at random points of a checkpoint save, then the same command again: the rerun resumes from the
newest complete checkpoint and its losses equal those of an uninterrupted run (real DeepSpeed ZeRO-3 engine on
CPU, one process per run)."""
from __future__ import annotations

import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_train_distributed import COMMON, REPO, _dirs, _env, _losses, _run  # noqa: E402
from train_world import make_train_shards  # noqa: E402

STEPS = 6
SEEDS = (0, 1, 2, 3)


def _save_seconds(folder: Path) -> float:
    """How long the save of a published checkpoint took: its first file to its manifest (written last)."""
    first = (folder / "trainer_state_rank0.pt").stat().st_mtime
    return (folder / "checkpoint_manifest.json").stat().st_mtime - first


def _kill_during_save(args: list[str], out: Path, step: int, delay: float) -> str:
    """Start ``args``, SIGKILL it ``delay`` seconds after the save of ``step`` began; returns what was on disk."""
    partial = out / "ckpt" / f".partial-global_step{step}"
    with open(out.parent / f"{out.name}.killed.log", "w") as log:
        proc = subprocess.Popen(args, cwd=out.parent, env=_env(), stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 600
        while not partial.exists():
            assert proc.poll() is None and time.monotonic() < deadline, f"no save of step {step}; see {log.name}"
            time.sleep(0.005)
        time.sleep(delay)
        proc.kill()
        proc.wait()
    return "partial" if partial.exists() else "published"


@pytest.mark.slow
def test_kill_at_random_points_of_a_save_resumes_exactly():
    root = Path(tempfile.mkdtemp(prefix="recbase-kill-test-"))
    try:
        shards = make_train_shards(root)
        driver = [sys.executable, str(REPO / "tests" / "train_driver.py"), "--ranks", "2", "--config", "tiny.json"]
        common = [*driver, f"data.shards={shards}", *COMMON, f"optim.max_steps={STEPS}", "checkpoint.every_steps=2",
                  "checkpoint.export_dir=none", "logging.valid_batches=0"]
        full = root / "full"
        _run([*common, *_dirs(full)], full)
        expected = _losses(full)
        save = _save_seconds(full / "ckpt" / "global_step4")
        seen = []
        for seed in SEEDS:
            run = root / f"killed{seed}"
            args = [*common, *_dirs(run)]
            seen.append(_kill_during_save(args, run, 4, random.Random(seed).uniform(0.0, save)))
            _run(args, run)
            resumed = _losses(run)
            assert sorted(resumed) == list(range(1, STEPS + 1)), (seed, seen)
            for step, loss in resumed.items():
                assert loss == pytest.approx(expected[step], rel=1e-6, abs=0), (seed, step, expected, resumed)
            log = (root / f"{run.name}.log").read_text()
            assert "newest complete checkpoint" in log
            assert not list((run / "ckpt").glob(".partial-*"))
        print(f"save takes {save:.3f}s; state at the kill per seed: {seen}")
        assert "partial" in seen, f"no kill landed inside a save ({save:.3f}s long): {seen}"
    finally:
        shutil.rmtree(root, ignore_errors=True)
