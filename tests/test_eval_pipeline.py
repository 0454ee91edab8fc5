"""The evaluator on the real upstream stages: demo-world shards with a held-out domain, a DeepSpeed ZeRO-3
checkpoint from the trainer, and its Hugging Face export (slow: a training process is spawned)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from eval_helpers import one_torch_thread  # noqa: F401  (autouse fixture)
from recbase.eval.job import EvalConfig, evaluate
from recbase.eval.model_io import TokenizerMismatch

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_checkpoint_and_export_evaluate_alike_on_heldout_domain(tmp_path):
    from recbase.data.shards import ShardConfig, build_shards
    from recbase.data.synthetic import generate_world
    from train_world import TOKENIZER_HASH, write_random_codes

    generate_world(tmp_path / "data", seed=0, domains=["movies", "books", "games"], users_per_domain=120,
                   items_per_domain=100)
    codes = write_random_codes(tmp_path / "data", tmp_path / "codes.parquet")
    shards = build_shards(ShardConfig(data_dir=str(tmp_path / "data"), codes_path=str(codes),
                                      out_dir=str(tmp_path / "shards"), name="demo", heldout_domains=["games"],
                                      tokens_per_shard=20_000, tokens_per_block=4_096))
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "train_driver.py"), "--config", "tiny.json",
                           f"data.shards={shards}", "data.seq_len=256", "optim.micro_batch_size=4",
                           "optim.global_batch_tokens=2048", "optim.max_steps=3", "optim.warmup_steps=1",
                           "logging.valid_batches=0", "logging.tensorboard=false", "logging.progress=false",
                           f"checkpoint.dir={run}/ckpt", f"logging.dir={run}/logs", "checkpoint.every_steps=3"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    checkpoint, export = run / "ckpt" / "global_step3", run / "hf"
    assert (checkpoint / "recbase.json").exists() and (export / "config.json").exists()

    common = dict(eval_dir=str(shards / "eval"), data_dir=str(tmp_path / "data"), codes=str(codes),
                  baselines=["random", "popularity"], beam_width=10)
    results = evaluate(EvalConfig(models={"checkpoint": str(checkpoint), "export": str(export)},
                                  out_dir=str(tmp_path / "out"), **common))
    games = results["domains"]["games"]
    assert games["users"] > 0 and games["history_items_unverified"] == 0
    ckpt, hf = games["models"]["checkpoint"], games["models"]["export"]
    assert ckpt["auc"] == pytest.approx(hf["auc"], abs=1e-6)
    assert ckpt["retrieval"]["mrr"] == pytest.approx(hf["retrieval"]["mrr"], abs=1e-6)
    assert results["tokenizer_hashes"][str(shards / "manifest.json")] == TOKENIZER_HASH
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["domains"]["games"]["users"] == games["users"]

    meta = json.loads((export / "recbase.json").read_text())
    (export / "recbase.json").write_text(json.dumps({**meta, "tokenizer_hash": "another-tokenizer"}))
    # the eval set itself states its tokenizer, so it is the first input the model is refused against
    with pytest.raises(TokenizerMismatch, match="another-tokenizer.*eval/games.parquet was made with tokenizer"):
        evaluate(EvalConfig(models={"export": str(export)}, out_dir=str(tmp_path / "out2"), **common))
