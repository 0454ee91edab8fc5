"""The dev suite's summary: model − bar per domain and Overall, mean ± half-range over seeds, through the CLI."""
import json

import pytest

from recbase.cli import main


def write_run(root, seed, heldout, aucs):
    """A run folder as the pipeline runner leaves it; ``aucs[domain] = (model auc, model auc_pmi, bar auc)``."""
    (root / "eval").mkdir(parents=True)
    (root / "pipeline_config.json").write_text(json.dumps({"seed": seed, "heldout_domains": heldout}))
    domains = {d: {"models": {"zero-shot": {"auc": a, "auc_pmi": p}},
                   "baselines": {"text_centred": {"auc": b}, "random": {"auc": 0.5}}} for d, (a, p, b) in aucs.items()}
    (root / "eval" / "metrics.json").write_text(json.dumps({"domains": domains}))
    return str(root)


def test_summary_over_folds_and_seeds(tmp_path, capsys):
    runs = [write_run(tmp_path / "a0", 0, ["x", "y"], {"x": (0.60, 0.70, 0.65), "y": (0.50, 0.55, 0.60)}),
            write_run(tmp_path / "a1", 1, ["x", "y"], {"x": (0.62, 0.74, 0.66), "y": (0.52, 0.57, 0.60)}),
            write_run(tmp_path / "b0", 0, ["z"], {"z": (0.70, 0.80, 0.75)}),
            write_run(tmp_path / "b1", 1, ["z"], {"z": (0.70, 0.82, 0.77)})]
    assert main(["suite", *runs, "--out", str(tmp_path / "suite.md")]) == 0
    lines = {tuple(c.strip() for c in line.strip("|").split("|")[:2]): line
             for line in capsys.readouterr().out.splitlines()[2:]}
    # x: log P − bar = −0.05 and −0.04 → −0.045 ± 0.005; PMI − bar = +0.05 and +0.08 → +0.065 ± 0.015
    assert lines[("A", "x")].endswith("| 0.655 ± 0.005 | -0.045 ± 0.005 | +0.065 ± 0.015 |")
    # fold A Overall, seed 0: (−0.05 − 0.10) / 2 = −0.075; seed 1: (−0.04 − 0.08) / 2 = −0.06
    assert "| -0.068 ± 0.008 |" in lines[("A", "**Overall**")]
    # all folds, seed 0: mean of −0.05, −0.10, −0.05 = −0.0667; seed 1: −0.04, −0.08, −0.07 = −0.0633
    assert "| -0.065 ± 0.002 |" in lines[("all", "**Overall**")]
    assert (tmp_path / "suite.md").read_text().splitlines()[0].startswith("| fold | domain | bar AUC | log P − bar")


def test_one_seed_shows_no_spread_and_all_folds_need_every_fold(tmp_path, capsys):
    runs = [write_run(tmp_path / "a0", 0, ["x"], {"x": (0.60, 0.70, 0.65)}),
            write_run(tmp_path / "b0", 0, ["z"], {"z": (0.70, 0.80, 0.75)}),
            write_run(tmp_path / "b1", 1, ["z"], {"z": (0.70, 0.82, 0.77)})]
    assert main(["suite", *runs]) == 0
    out = capsys.readouterr().out
    assert "| A | x | 0.650 | -0.050 | +0.050 |" in out
    assert "| all | **Overall** | 0.700 | -0.050 | +0.050 |" in out     # seed 0 only: fold A has no seed 1


def test_a_missing_model_is_named(tmp_path):
    run = write_run(tmp_path / "a0", 0, ["x"], {"x": (0.6, 0.6, 0.6)})
    with pytest.raises(KeyError, match="no model 'other'"):
        main(["suite", run, "--model", "other"])
