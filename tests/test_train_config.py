"""Training config, presets, derived sizes and the dry run (no processes, no DeepSpeed engine)."""
from __future__ import annotations

import json

import pytest

from recbase.cli import main
from recbase.config import ConfigError
from recbase.train.config import load_train_config
from recbase.train.estimates import mfu, memory_per_rank, model_size, peak_flops
from recbase.train.model import qwen2_config
from recbase.train.optim import lr_factor
from recbase.train.plan import PAPER_VOCAB

TRAIN_PRESETS = ["tiny.json", "0.3b.json", "1.5b.json", "finetune.json"]   # launch/configs also holds other stages' configs


@pytest.mark.parametrize("name", TRAIN_PRESETS)
def test_presets_load(name):
    cfg = load_train_config(name)
    assert cfg.deepspeed.zero_stage == 3


# Paper, Table "model sizes": RecBase 0.3B is 313M parameters and 1.5B is 1,318M. Our count uses the paper's
# vocabulary layout (L=4, K=2048 -> 8,320 ids) with tied embeddings.
@pytest.mark.parametrize("name,paper", [("0.3b.json", 313e6), ("1.5b.json", 1318e6)])
def test_paper_sizes_on_meta_device(name, paper):
    cfg = load_train_config(name)
    size = model_size(qwen2_config(cfg.model, PAPER_VOCAB.model_vocab_size))
    assert abs(size.parameters - paper) / paper < 0.05, size.parameters


def test_unknown_key_is_an_error(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"model": {"hiden_size": 64}}))
    with pytest.raises(ConfigError, match=r"bad.json.*unknown key\(s\) hiden_size"):
        load_train_config(path)
    with pytest.raises(ConfigError, match="unknown key"):
        load_train_config("tiny.json", ["optim.learning_rate=1e-3"])


def test_invalid_combinations_are_named():
    with pytest.raises(ConfigError, match="tensor_parallel"):
        load_train_config("tiny.json", ["deepspeed.tensor_parallel=2"])
    with pytest.raises(ConfigError, match="Ulysses"):
        load_train_config("tiny.json", ["deepspeed.sequence_parallel=2"])
    with pytest.raises(ConfigError, match="attention_pattern"):
        load_train_config("tiny.json", ["model.attention_pattern=bidirectional"])
    with pytest.raises(ConfigError, match="data.seq_len 4096 exceeds model.max_position_embeddings 2048"):
        load_train_config("tiny.json", ["data.seq_len=4096"])
    cfg = load_train_config("tiny.json", ["optim.global_batch_tokens=5000"])
    with pytest.raises(ConfigError, match="global_batch_tokens=5000"):
        cfg.gradient_accumulation_steps(1)
    assert load_train_config("tiny.json").gradient_accumulation_steps(2) == 8192 // (8 * 512 * 2)


def test_dry_run_prints_computed_sizes(capsys):
    assert main(["pretrain", "--config", "1.5b.json", "--dry-run", "--world-size", "16"]) == 0
    out = capsys.readouterr().out
    cfg = load_train_config("1.5b.json")
    size = model_size(qwen2_config(cfg.model, PAPER_VOCAB.model_vocab_size))
    assert f"parameters: {size.parameters}\n" in out
    assert f"flops per token: {size.flops_per_token(cfg.data.seq_len):.4g}" in out
    assert "world: 16 ranks = data-parallel 16 x tensor-parallel 1" in out and "4 accumulation steps" in out
    for stage in range(4):
        assert f"zero{stage}:" in out


def test_lr_schedule_warmup_then_cosine_to_floor():
    cfg = load_train_config("tiny.json", ["optim.warmup_steps=10", "optim.max_steps=110", "optim.min_lr_ratio=0.1"])
    o = cfg.optim
    assert lr_factor(0, o) == pytest.approx(0.1) and lr_factor(9, o) == pytest.approx(1.0)
    assert lr_factor(60, o) == pytest.approx(0.55)          # half-way: floor + (1 - floor) / 2
    assert lr_factor(110, o) == pytest.approx(0.1)
    assert all(lr_factor(s, o) >= lr_factor(s + 1, o) for s in range(10, 110))


def test_memory_estimate_follows_zero_paper():
    cfg = load_train_config("1.5b.json")
    size = model_size(qwen2_config(cfg.model, PAPER_VOCAB.model_vocab_size))
    mem = memory_per_rank(size, 8, 1, 16, mixed_precision=True, activation_checkpointing=True)
    act = mem["activations"]
    p = size.parameters
    assert mem["zero0"] - act == pytest.approx(16 * p)
    assert mem["zero3"] - act == pytest.approx(16 * p / 8)
    assert mem["zero0"] > mem["zero1"] > mem["zero2"] > mem["zero3"]


def test_mfu_uses_device_table_and_is_na_on_cpu():
    assert peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops("NVIDIA H100 PCIe") == 756e12
    assert peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_flops(None) is None and mfu(1e9, 1e4, 1, None) is None
    assert peak_flops(None, configured_tflops=2.0) == 2e12
    assert mfu(6e9, 1e5, 8, 989e12) == pytest.approx(6e9 * 1e5 / (8 * 989e12))


@pytest.mark.parametrize("override,message", [
    ("optim.lr=0", r"optim.lr=0.0 is outside the allowed range > 0"),
    ("optim.beta2=1.0", r"optim.beta2=1.0 is outside the allowed range \[0, 1\)"),
    ("optim.warmup_steps=-1", r"optim.warmup_steps=-1 is outside the allowed range >= 0"),
    ("data.num_workers=-2", r"data.num_workers=-2 is outside the allowed range >= 0"),
    ("optim.min_lr_ratio=1.5", r"optim.min_lr_ratio=1.5 is outside the allowed range \[0, 1\]"),
    ("model.dropout=1.0", r"model.dropout=1.0 is outside the allowed range \[0, 1\)"),
])
def test_numeric_fields_out_of_range_name_key_and_range(override, message):
    with pytest.raises(ConfigError, match=message):
        load_train_config("tiny.json", [override])


def test_seq_len_shorter_than_one_item_is_refused():
    cfg = load_train_config("tiny.json", ["data.seq_len=4"])
    with pytest.raises(ConfigError, match=r"data.seq_len=4 is shorter than one item: .* 4 tokens, .* >= 5"):
        cfg.check_seq_len(4)
    cfg.check_seq_len(3)
