"""End-to-end training on CPU with real DeepSpeed engines (gloo), in processes spawned from the test.

One module-scoped set of runs on demo-world shards is shared by the tests (process start-up dominates):

  A  1 process, ZeRO-3, the micro-batches of 2 ranks interleaved (2 accumulation steps), 8 steps, checkpoints at
     4 and 8, Hugging Face export, logits on a fixed input;
  B  2 processes (deepspeed launcher), ZeRO-3, half the accumulation steps each: the same global batches as A;
  C  A's command killed (SIGKILL) right after its step-4 checkpoint, then run again: it resumes;
  D  like C but ZeRO stage 0 (one rank's preset, e.g. beauty_train.json): killed after step 4, resumed;
  E  like A with the fused linear + cross-entropy head and activation checkpointing, two steps;
  F  fine-tuning of A's Hugging Face export on the shards of one domain (launch/finetune.py);
  G  2 processes (torchrun) with AutoTP tensor parallelism (ZeRO-1), H the same batches on 1 process without it.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from train_driver import PROBE  # noqa: E402
from train_world import build_domain_shards, make_train_shards  # noqa: E402

from recbase.train.metrics import read_metrics  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
STEPS = 8
COMMON = ["optim.global_batch_tokens=4096", "optim.micro_batch_size=4", "data.seq_len=256", "optim.warmup_steps=2",
          f"optim.max_steps={STEPS}", "optim.lr=3e-3", "logging.every_steps=1", "logging.valid_every_steps=4",
          "logging.valid_batches=4", "logging.tensorboard=false", "logging.progress=false"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT")}
    # this checkout first: the code under test, not whatever recbase the environment has installed
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests")]),
               MASTER_PORT=str(_free_port()))
    return env


def _run(args: list[str], out: Path) -> None:
    proc = subprocess.run(args, cwd=out.parent, env=_env(), capture_output=True, text=True, timeout=300)
    (out.parent / f"{out.name}.log").write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


def _run_and_kill_after_checkpoint(args: list[str], out: Path, tag: str) -> None:
    """Start ``args`` and SIGKILL it as soon as checkpoint ``tag`` is complete (DeepSpeed's ``latest`` names it)."""
    latest = out / "ckpt" / "latest"
    with open(out.parent / f"{out.name}.killed.log", "w") as log:
        proc = subprocess.Popen(args, cwd=out.parent, env=_env(), stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while not (latest.exists() and latest.read_text().strip() == tag):
            assert proc.poll() is None and time.monotonic() < deadline, f"no checkpoint {tag}; see {log.name}"
            time.sleep(0.01)
        proc.kill()
        proc.wait()
    later = sorted(p.name for p in (out / "ckpt").glob("global_step*") if p.name != tag)
    assert later == [], f"the run got past {tag} before it was killed: {later}"


def _dirs(run: Path) -> list[str]:
    return [f"checkpoint.dir={run}/ckpt", f"logging.dir={run}/logs"]


@pytest.fixture(scope="module")
def runs():
    # a private folder: pytest prunes old basetemp folders, and other pytest sessions on the machine would
    # delete this one while the runs use it
    root = Path(tempfile.mkdtemp(prefix="recbase-train-test-"))
    yield _make_runs(root)
    if not os.environ.get("RECBASE_KEEP_TEST_RUNS"):
        shutil.rmtree(root, ignore_errors=True)


def _make_runs(root: Path) -> Path:
    shards = make_train_shards(root)
    common = [f"data.shards={shards}", *COMMON]
    driver = [sys.executable, str(REPO / "tests" / "train_driver.py"), "--ranks", "2", "--config", "tiny.json"]
    a, b, c, d, e, f, g, h = (root / n for n in "abcdefgh")
    _run([*driver, "--logits-out", str(root / "a_logits.pt"), *common, *_dirs(a), "checkpoint.every_steps=4",
          "logging.tensorboard=true"], a)
    # the deepspeed launcher (appends --local_rank=N), as on a GPU node
    _run([sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2", "--master_port", str(_free_port()),
          str(REPO / "launch" / "pretrain.py"), "--config", "tiny.json", *common, *_dirs(b),
          "checkpoint.export_dir=none", "checkpoint.every_steps=0"], b)
    # C: A's command killed after its step-4 checkpoint, then the same command again (resume=auto)
    c_args = [*driver, *common, *_dirs(c), "checkpoint.every_steps=4", "checkpoint.export_dir=none"]
    _run_and_kill_after_checkpoint(c_args, c, "global_step4")
    _run(c_args, c)
    d_args = [*driver, *common, *_dirs(d), "deepspeed.zero_stage=0", "checkpoint.every_steps=4",
              "checkpoint.export_dir=none"]
    _run_and_kill_after_checkpoint(d_args, d, "global_step4")
    _run(d_args, d)
    _run([*driver, *common, *_dirs(e), "model.fused_linear_ce=true", "model.activation_checkpointing=true",
          "optim.max_steps=2", "logging.valid_batches=0", "checkpoint.export_dir=none"], e)
    games = build_domain_shards(root, "games", ["games"])
    _run([sys.executable, str(REPO / "launch" / "finetune.py"), "--init", str(a / "hf"), "--config", "finetune.json",
          f"data.shards={games}", *COMMON, *_dirs(f), "optim.max_steps=2", "optim.lr=1e-4",
          f"checkpoint.export_dir={f}/hf"], f)
    # AutoTP: 2 ranks hold half of every weight matrix and read the same batches; ZeRO-1 (AutoTP excludes 3)
    tp_args = [*common, "optim.global_batch_tokens=2048", "optim.max_steps=3", "deepspeed.zero_stage=1",
               "logging.valid_batches=0"]
    _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
          str(REPO / "launch" / "pretrain.py"), "--config", "tiny.json", *tp_args, *_dirs(g),
          "deepspeed.tensor_parallel=2", f"checkpoint.export_dir={g}/hf"], g)
    _run([sys.executable, str(REPO / "launch" / "pretrain.py"), "--config", "tiny.json", *tp_args, *_dirs(h),
          "checkpoint.export_dir=none"], h)
    return root


def _losses(run: Path, kind: str = "train") -> dict[int, float]:
    return {s: r["loss"] for s, r in read_metrics(run / "logs" / "metrics.jsonl", kind).items()}


def test_tiny_loss_falls(runs):
    train, valid = _losses(runs / "a"), _losses(runs / "a", "valid")
    assert sorted(train) == list(range(1, STEPS + 1))
    # initial loss is about ln(vocab of 384 ids); 8 steps at lr 3e-3 must bring it clearly down
    assert train[STEPS] < train[1] - 0.3, train
    assert valid[STEPS] < valid[4], valid
    rec = read_metrics(runs / "a" / "logs" / "metrics.jsonl")[STEPS]
    assert rec["tokens_per_s"] > 0 and rec["grad_norm"] > 0 and rec["mfu"] is None   # no CPU peak configured
    assert any((runs / "a" / "logs" / "tensorboard").glob("events.out.tfevents.*"))
    assert "[train step 8] loss=" in (runs / "a.log").read_text()


def test_two_ranks_match_one_rank(runs):
    one, two = _losses(runs / "a"), _losses(runs / "b")
    assert sorted(two) == list(range(1, STEPS + 1))
    for step, loss in two.items():
        assert loss == pytest.approx(one[step], rel=1e-4), (step, one, two)


def test_resume_reproduces_uninterrupted_run(runs):
    full, resumed = _losses(runs / "a"), _losses(runs / "c")
    assert sorted(resumed) == list(range(1, STEPS + 1))   # steps 1-4 before the kill, 5-8 after the resume
    for step, loss in resumed.items():
        assert loss == pytest.approx(full[step], rel=1e-6, abs=0), (step, full, resumed)
    assert "resumed from" in (runs / "c.log").read_text()


def test_zero0_trains_and_resumes_like_zero3(runs):
    """Without ZeRO (stage 0) the run is the uninterrupted ZeRO-3 run, step for step, across a kill and resume."""
    zero3, zero0 = _losses(runs / "a"), _losses(runs / "d")
    assert sorted(zero0) == list(range(1, STEPS + 1))
    for step, loss in zero0.items():
        assert loss == pytest.approx(zero3[step], rel=1e-5), (step, zero3, zero0)
    assert "resumed from" in (runs / "d.log").read_text()


def test_export_reloads_with_same_logits(runs, tmp_path):
    from recbase.cli import main
    from recbase.train.export import load_model

    expected = torch.load(runs / "a_logits.pt")
    model, meta = load_model(runs / "a" / "hf")
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=PROBE).logits, expected, rtol=1e-5, atol=1e-5)
    assert meta["tokenizer_hash"] == "train-test-tokenizer" and meta["step"] == STEPS
    assert meta["vocab"]["model_vocab_size"] == model.config.vocab_size
    assert meta["train_domains"] == ["books", "games", "movies"]
    assert meta["tokenizer"] == {"hash": "train-test-tokenizer", "kind": "random", "embedder": "none",
                                 "train_domains": ["books", "movies"]}
    assert meta["token_layout"].startswith("token id = 8 + level * 64 + code, for level 0..3")
    # the DeepSpeed checkpoint folder loads to the same model (ZeRO-3 shards consolidated)
    from_ckpt, _ = load_model(runs / "a" / "ckpt")
    with torch.no_grad():
        torch.testing.assert_close(from_ckpt(input_ids=PROBE).logits, expected, rtol=1e-5, atol=1e-5)
    # `recbase export` of the earlier checkpoint gives a folder AutoModelForCausalLM reads
    assert main(["export", str(runs / "a" / "ckpt" / "global_step4"), str(tmp_path / "hf4")]) == 0
    from transformers import AutoModelForCausalLM

    step4 = AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf4"))
    assert not torch.equal(step4.model.embed_tokens.weight, model.model.embed_tokens.weight)


def test_fused_head_and_activation_checkpointing_under_zero3_match(runs):
    fused, plain = _losses(runs / "e"), _losses(runs / "a")
    assert sorted(fused) == [1, 2]
    for step, loss in fused.items():
        assert loss == pytest.approx(plain[step], rel=1e-5), (step, plain, fused)


def test_finetune_starts_from_the_pretrained_weights(runs):
    from recbase.train.export import load_model

    tuned, fresh = _losses(runs / "f"), _losses(runs / "a")
    assert sorted(tuned) == [1, 2]
    # a fresh model starts near ln(384) = 5.95; the loaded one starts where pretraining got to
    assert tuned[1] < fresh[1] - 0.3, (tuned, fresh)
    model, meta = load_model(runs / "f" / "hf")
    pretrained, _ = load_model(runs / "a" / "hf")
    assert meta["step"] == 2 and meta["train_config"]["checkpoint"]["init_from"] == str(runs / "a" / "hf")
    assert meta["train_config"]["model"] == _meta(runs / "a" / "hf")["train_config"]["model"]
    assert not torch.equal(model.model.norm.weight, pretrained.model.norm.weight)


def _meta(path: Path) -> dict:
    from recbase.train.export import load_meta

    return load_meta(path)


def test_autotp_matches_one_process_and_exports_whole_weights(runs):
    from recbase.train.export import load_model

    tp, single = _losses(runs / "g"), _losses(runs / "h")
    assert sorted(tp) == [1, 2, 3]
    for step, loss in tp.items():
        assert loss == pytest.approx(single[step], rel=1e-4), (step, single, tp)
    model, meta = load_model(runs / "g" / "hf")
    assert model.model.layers[0].self_attn.q_proj.weight.shape == (128, 128)   # gathered, not a TP shard
    assert meta["train_config"]["deepspeed"]["tensor_parallel"] == 2


def test_finetune_refuses_shards_of_another_tokenizer(runs):
    """Checked before any process group or model is created, naming the manifest and both hashes."""
    from shards_world import TOKENIZER_HASH, make_world

    from recbase.data.shards import ShardConfig, build_shards
    from recbase.train.config import load_train_config
    from recbase.train.loop import Trainer

    world = make_world(runs / "other-tokenizer", n_users=10, n_items=20)
    other = build_shards(ShardConfig(data_dir=str(world / "data"), codes_path=str(world / "codes.parquet"),
                                     out_dir=str(world / "shards"), name="other"))
    cfg = load_train_config("finetune.json", [f"data.shards={other}", f"checkpoint.init_from={runs / 'a' / 'hf'}"])
    with pytest.raises(ValueError, match=rf"{other}/manifest.json.*{TOKENIZER_HASH}.*train-test-tokenizer"):
        Trainer(cfg)
    assert not torch.distributed.is_initialized()


def test_a_plain_run_prints_no_deepspeed_chatter(runs):
    log = (runs / "h.log").read_text()
    for chatter in ("Setting accelerator to CPU", "built successfully", "is deprecated"):
        assert chatter not in log, chatter
    assert "[train step" in log


def test_resume_refuses_shards_of_another_tokenizer(runs):
    """The checkpoint's tokenizer is compared with the shards' before any process group, model or weight."""
    from shards_world import TOKENIZER_HASH, make_world

    from recbase.data.shards import ShardConfig, build_shards
    from recbase.errors import UserError
    from recbase.train.config import load_train_config
    from recbase.train.loop import Trainer

    world = make_world(runs / "resume-other-tokenizer", n_users=10, n_items=20)
    other = build_shards(ShardConfig(data_dir=str(world / "data"), codes_path=str(world / "codes.parquet"),
                                     out_dir=str(world / "shards"), name="other"))
    cfg = load_train_config("tiny.json", [f"data.shards={other}", f"checkpoint.dir={runs / 'a' / 'ckpt'}"])
    with pytest.raises(UserError, match=rf"global_step{STEPS}/recbase.json: the checkpoint was trained on shards of "
                                        rf"tokenizer train-test-tokenizer, but data.shards holds tokenizer "
                                        rf"{TOKENIZER_HASH}"):
        Trainer(cfg)
    assert not torch.distributed.is_initialized()
