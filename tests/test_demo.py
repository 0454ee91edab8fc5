"""The README's first command: the whole pipeline on the demo world, shrunk to seconds, through the CLI."""
import json
import subprocess
import sys
from pathlib import Path

TINY = ["items_per_domain=60", "users_per_domain=30", "embedder=hashing", "codebook_size=16",
        'tokenizer_overrides=["clvae.epochs=4", "clvae.epochs_per_level=1", "clvae.min_epochs_per_level=1"]',
        "train_steps=4", "finetune_steps=2",
        'train_overrides=["checkpoint.every_steps=0", "logging.valid_every_steps=0", "logging.every_steps=2"]']


def _demo(out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "recbase.cli", "demo", "--out", str(out), *TINY],
                          capture_output=True, text=True, timeout=600)


def test_demo_runs_every_stage_and_resumes(tmp_path):
    out = tmp_path / "demo"
    first = _demo(out)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    for stage in range(1, 9):
        assert f"=== {stage}/8 " in first.stdout
    # the demo world alone: no real pretraining domain to fit the head's recency on, so it is learned
    assert "[head-recency] recency biases learned: no pretraining domain comes from a dataset file" in first.stdout
    assert not (out / "run" / "head_recency.json").exists()
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    assert set(metrics["domains"]) == {"news", "products"}
    assert set(metrics["overall"]["models"]) == {"zero-shot", "fine-tuned on news"}
    for section in metrics["domains"].values():
        assert section["pairs"] > 0
        for result in section["models"].values():
            assert 0.0 <= result["auc"] <= 1.0
        assert {"random", "text_raw", "text_centred", "popularity"} <= set(section["baselines"])
    assert "text sim (centred)" in (out / "eval" / "report.md").read_text()

    # A rerun finds every stage's output and trains nothing again.
    second = _demo(out)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "train:" not in second.stderr
    again = json.loads((out / "eval" / "metrics.json").read_text())
    assert again["overall"]["models"] == metrics["overall"]["models"]
