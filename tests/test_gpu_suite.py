"""The GPU suite's CPU smoke run: every section of the plan runs through the same code as on a GPU (tiny shapes),
writes its record, and the report holds them; a failing section records its error instead of stopping the suite."""
from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

SUITE = Path(__file__).resolve().parents[1] / "launch" / "bench" / "gpu_suite.py"


def load_suite():
    spec = importlib.util.spec_from_file_location("gpu_suite", SUITE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module   # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-suite")
    done = subprocess.run([sys.executable, str(SUITE), "--out", str(out), "--cpu-smoke"], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out, json.loads((out / "gpu_suite.json").read_text())


def test_cpu_smoke_runs_every_planned_section(smoke):
    out, report = smoke
    suite = load_suite()
    planned = [name for name, _, _ in suite.plan(True, suite.SMOKE)]
    assert list(report["sections"]) == planned
    failed = {n: r.get("error") for n, r in report["sections"].items() if r["status"] != "ok"}
    assert not failed, failed
    table = (out / "gpu_suite.md").read_text()
    for name in planned:
        assert f"| {name} | ok |" in table


def test_cpu_smoke_records_what_each_section_measured(smoke):
    _, report = smoke
    s = {n: r["result"] for n, r in report["sections"].items()}
    assert s["correctness"]["pytest_exit_code"] == 0 and not s["correctness"]["failed"]
    rq = s["rq_search"]
    assert rq["identical_rows_vs_pytorch_reference"] == 1.0 and rq["triton"]["ms"] > 0
    for name in ("pretrain-0.3b-sdpa-z3", "pretrain-1.5b-sdpa-z3"):
        r = s[name]
        assert r["tokens_per_s"] > 0 and 0 < r["fill"] <= 1 and math.isfinite(r["last_loss"])
        assert r["attention"] == "sdpa" and r["zero_stage"] == 3 and r["steps"] == 2
    ev = s["evaluation"]
    assert ev["pairs"] == 2 * ev["users"] and ev["scoring_fast"]["pairs"] == ev["pairs"]
    assert ev["fast_vs_naive_max_abs_diff"] < 1e-4   # fp32 on CPU: the two layouts agree
    assert ev["retrieval_batched"]["users_per_s"] > 0
    assert report["shards"]["totals"]["train"]["users"] == 300


class SmokeArgs:
    cpu_smoke = True


@pytest.fixture
def suite_dir(tmp_path):
    suite = load_suite()
    (tmp_path / "logs").mkdir()
    (tmp_path / "sections").mkdir()
    suite.make_shards(tmp_path, suite.SMOKE)
    return suite, tmp_path


def test_a_failing_section_records_its_error(suite_dir):
    """FlexAttention cannot train on CPU: the section's process fails, and its record says why."""
    suite, out = suite_dir
    record = suite.run_child("pretrain-0.3b-flex_attention-z3", SmokeArgs,
                             {"size": "0.3b", "attention": "flex_attention", "stage": 3}, 120, out)
    assert record["status"] == "error"
    assert "model.attention=flex_attention needs a CUDA device" in record["error"], record["error"]


def test_a_section_past_its_time_limit_is_stopped(suite_dir):
    suite, out = suite_dir
    record = suite.run_child("evaluation", SmokeArgs, {}, 2, out)
    assert record["status"] == "error" and record["error"].startswith("timed out after 2 s")
    assert record["seconds"] < 30


def test_budget_spent_sections_are_reported_not_run(tmp_path):
    done = subprocess.run([sys.executable, str(SUITE), "--out", str(tmp_path), "--cpu-smoke", "--budget-s", "1"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_suite.json").read_text())
    assert report["sections"] and all(r["status"] == "not run" for r in report["sections"].values())
    assert "budget was spent" in (tmp_path / "gpu_suite.md").read_text()
