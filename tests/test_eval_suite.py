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


def write_pairs(root, domain, seed, model="zero-shot"):
    """Pair scores as `recbase evaluate` writes them: 20 users of 4 candidates, the first one the positive."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    n = 80
    label = np.tile([1, 0, 0, 0], 20)
    cols = {"user_id": np.repeat([f"u{i}" for i in range(20)], 4), "candidate": [f"c{i}" for i in range(n)],
            "label": label, "text_centred": rng.normal(size=n) + 0.5 * label,
            f"{model}/head": rng.normal(size=n) + 0.6 * label, f"{model}/logp_0": rng.normal(size=n) + 0.3 * label,
            f"{model}/prior_0": rng.normal(size=n), f"{model}/cpmi": rng.normal(size=n) + 0.8 * label}
    (root / "eval" / "pairs").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({k: pa.array(list(v) if k in ("user_id", "candidate") else v) for k, v in cols.items()}),
                   root / "eval" / "pairs" / f"{domain}.parquet")
    return cols


def test_fusion_sweep_applies_the_weight_the_other_fold_chose(tmp_path, capsys):
    import numpy as np

    from recbase.eval.metrics import auc

    runs = [write_run(tmp_path / "a0", 0, ["x"], {"x": (0.6, 0.6, 0.6)}),
            write_run(tmp_path / "b0", 0, ["z"], {"z": (0.6, 0.6, 0.6)})]
    pairs = {"x": write_pairs(tmp_path / "a0", "x", 1), "z": write_pairs(tmp_path / "b0", "z", 2)}

    def gap(cols, score, w):   # per user: z(head) + w z(score), pooled AUC minus the bar's, written out by hand
        values = cols["zero-shot/logp_0"] - cols["zero-shot/prior_0"] if score == "pmi" else cols[f"zero-shot/{score}"]
        fused = []
        for u in range(20):
            h, s = cols["zero-shot/head"][4 * u:4 * u + 4], values[4 * u:4 * u + 4]
            fused += list((h - h.mean()) / h.std() + w * (s - s.mean()) / s.std())
        return auc(np.array(fused), cols["label"]) - auc(cols["text_centred"], cols["label"])

    weights = [0.1, 0.5, 2.0]
    assert main(["suite", *runs, "--fuse", "pmi,cpmi", "--weights", "0.1,0.5,2.0"]) == 0
    out = capsys.readouterr().out
    for score, label in (("pmi", "PMI"), ("cpmi", "catalog PMI")):
        for fold, mine, other in (("A", "x", "z"), ("B", "z", "x")):
            best = max(weights, key=lambda w: gap(pairs[other], score, w))
            row = [line for line in out.splitlines() if line.startswith(f"| {label} | {fold} |")]
            assert len(row) == 1
            assert f"| {best} | {mine} {gap(pairs[mine], score, best):+.3f} |" in row[0]
            assert " / ".join(f"{gap(pairs[mine], score, w):+.4f}" for w in weights) in row[0]


def test_fusion_sweep_names_a_missing_score_column(tmp_path, capsys):
    runs = [write_run(tmp_path / "a0", 0, ["x"], {"x": (0.6, 0.6, 0.6)})]
    write_pairs(tmp_path / "a0", "x", 1)
    assert main(["suite", *runs, "--fuse", "trie"]) == 2
    err = capsys.readouterr().err
    assert "x.parquet: no column zero-shot/trie" in err and len(err.strip().splitlines()) == 1


def test_slate_posterior_keeps_the_order_within_a_user_and_makes_users_comparable():
    import numpy as np

    from recbase.eval.calibrate import slate_posterior
    from recbase.eval.metrics import auc

    # user 1's candidates all lie close to the history, user 2's all far: raw cosines put user 1's negatives above
    # user 2's positive (AUC 6/8), the posteriors over each user's own candidates do not
    users = [np.array([0.9, 0.8, 0.8]), np.array([0.3, 0.1, 0.1])]
    labels = np.array([1, 0, 0, 1, 0, 0])
    assert auc(np.concatenate(users), labels) == 0.75
    posterior = [slate_posterior(u, 10.0) for u in users]
    assert all(abs(p.sum() - 1) < 1e-12 and (np.argsort(p) == np.argsort(u)).all() for p, u in zip(posterior, users))
    assert auc(np.concatenate(posterior), labels) == 1.0


def test_calibration_table_chooses_beta_on_the_other_fold_and_reports_the_order_within_users(tmp_path, capsys):
    import numpy as np

    from recbase.eval.calibrate import slate_posterior
    from recbase.eval.metrics import auc, gauc

    runs = [write_run(tmp_path / "a0", 0, ["x"], {"x": (0.6, 0.6, 0.6)}),
            write_run(tmp_path / "b0", 0, ["z"], {"z": (0.6, 0.6, 0.6)})]
    pairs = {"x": write_pairs(tmp_path / "a0", "x", 1), "z": write_pairs(tmp_path / "b0", "z", 2)}
    groups = np.repeat(np.arange(20), 4)

    def calibrated_gap(cols, column, beta):   # per user softmax(beta × score), pooled AUC minus the bar's, by hand
        values = np.concatenate([slate_posterior(cols[column][4 * u:4 * u + 4], beta) for u in range(20)])
        return auc(values, cols["label"]) - auc(cols["text_centred"], cols["label"])

    betas = [0.5, 2.0, 8.0]
    assert main(["suite", *runs, "--calibrate", "--betas", "0.5,2.0,8.0"]) == 0
    out = capsys.readouterr().out
    for column, label in (("text_centred", "text sim (centred), the bar"), ("zero-shot/head", "embedding head")):
        for fold, mine, other in (("A", "x", "z"), ("B", "z", "x")):
            best = max(betas, key=lambda b: calibrated_gap(pairs[other], column, b))
            bar_best = max(betas, key=lambda b: calibrated_gap(pairs[other], "text_centred", b))
            row = [line for line in out.splitlines() if line.startswith(f"| {label} | {fold} |")]
            assert len(row) == 1
            gap = calibrated_gap(pairs[mine], column, best)
            against_calibrated = gap - calibrated_gap(pairs[mine], "text_centred", bar_best)
            within = (gauc(groups, pairs[mine][column], pairs[mine]["label"])
                      - gauc(groups, pairs[mine]["text_centred"], pairs[mine]["label"]))
            assert row[0].endswith(f"| {best} | {mine} {gap:+.3f} | {gap:+.4f} | {against_calibrated:+.4f} | "
                                   f"{within:+.4f} |")
    assert "| +0.0000 | +0.0000 |" in [line for line in out.splitlines() if line.startswith("| text sim")][0]
