"""Checkpoint folders without a training job: publication, resolution after a kill at every point of a save,
manifest checks, weights-only loading, resume compatibility, and the Hugging Face export's weight hashes.

The folders here are written with the module's own functions around a stage-0 layout (one
``mp_rank_00_model_states.pt`` holding the whole module), which is what DeepSpeed writes without ZeRO; the real
engine's save and resume are covered by ``test_train_distributed.py``.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from recbase.errors import UserError
from recbase.train import checkpoint as ckpt

TOKENIZER = "tok-a"


def _model_config() -> dict:
    from transformers import Qwen2Config

    return Qwen2Config(vocab_size=384, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                       num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                       tie_word_embeddings=True).to_dict()


def _write_step(ckpt_dir: Path, step: int, *, publish: bool = True, init_from: str | None = None,
                recorded_dir: str | None = None) -> Path:
    """A stage-0 checkpoint of a tiny Qwen2 at ``step`` (weights seeded by the step); ``init_from`` and
    ``recorded_dir`` are recorded as the training config's ``checkpoint.init_from`` and ``checkpoint.dir``, and
    the weights at ``init_from`` (when any) as training records them."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(step)
    model = Qwen2ForCausalLM(Qwen2Config.from_dict(_model_config()))
    partial = ckpt.begin(ckpt_dir, step)
    torch.save({"module": {f"lm.{k}": v for k, v in model.state_dict().items()}},
               partial / "mp_rank_00_model_states.pt")
    torch.save({"loader": {"epoch": 0}, "rng": {"torch": torch.get_rng_state()}}, partial / "trainer_state_rank0.pt")
    meta = {"step": step, "tokenizer_hash": TOKENIZER, "model_config": _model_config(), "vocab": {}}
    if init_from is not None:
        meta["train_config"] = {"checkpoint": {"init_from": init_from}}
        if init_from:
            meta["init_weights"] = ckpt.weights_identity(init_from)
    if recorded_dir is not None:
        meta["train_config"] = {"checkpoint": {"dir": recorded_dir}}
    (partial / ckpt.META_FILE).write_text(json.dumps(meta))
    return ckpt.publish(ckpt_dir, step) if publish else partial


def test_publish_writes_manifest_last_and_moves_the_pointer(tmp_path):
    folder = _write_step(tmp_path, 2)
    assert folder.name == "global_step2" and (tmp_path / "latest").read_text().strip() == "global_step2"
    files = ckpt.read_manifest(folder)["files"]
    assert set(files) == {"mp_rank_00_model_states.pt", "trainer_state_rank0.pt", ckpt.META_FILE}
    assert not list(tmp_path.glob(".partial-*"))
    assert ckpt.resolve(tmp_path)[0] == folder


@pytest.mark.parametrize("killed_at", ["partial files", "manifest written", "renamed, pointer not moved",
                                       "empty pointer"])
def test_a_kill_at_any_point_of_a_save_resumes_from_the_newest_complete(tmp_path, killed_at):
    """The states a ``kill -9`` can leave behind, in the order a save goes through them."""
    done = _write_step(tmp_path, 2)
    if killed_at == "partial files":
        partial = _write_step(tmp_path, 4, publish=False)
        (partial / "mp_rank_00_model_states.pt").write_bytes(b"trunc")
        expected = done
    elif killed_at == "manifest written":
        partial = _write_step(tmp_path, 4, publish=False)
        (partial / ckpt.MANIFEST_FILE).write_text(json.dumps({"step": 4, "files": {}}))
        expected = done
    else:
        expected = _write_step(tmp_path, 4)
        (tmp_path / "latest").write_text("global_step2\n" if killed_at.startswith("renamed") else "")
    folder, why = ckpt.resolve(tmp_path)
    assert folder == expected and "newest complete checkpoint" in why
    ckpt.verify(folder)
    # the next save of step 4 starts from a clean partial folder and replaces what was there
    again = _write_step(tmp_path, 4)
    assert ckpt.resolve(tmp_path)[0] == again and not list(tmp_path.glob(".partial-*"))


def test_an_unfinished_folder_named_directly_is_refused(tmp_path):
    partial = _write_step(tmp_path, 2, publish=False)
    partial.rename(tmp_path / "global_step2")
    with pytest.raises(UserError, match="never completed"):
        ckpt.resolve(tmp_path / "global_step2")
    assert ckpt.resolve(tmp_path) == (None, f"no complete checkpoint in {tmp_path}")


def test_a_flipped_byte_is_found_before_loading(tmp_path):
    folder = _write_step(tmp_path, 2)
    target = folder / "mp_rank_00_model_states.pt"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"mp_rank_00_model_states.pt: SHA-256 .* does not match .*checkpoint_manifest"):
        ckpt.consolidated_state_dict(folder)
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    ckpt.verify(folder)
    (folder / "trainer_state_rank0.pt").unlink()
    with pytest.raises(UserError, match="trainer_state_rank0.pt: missing"):
        ckpt.verify(folder)


class _Payload:
    """Unpickling this runs ``Path.touch`` on a marker: what an attacker's checkpoint file would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pickle_payload_is_refused_without_running(tmp_path):
    marker = tmp_path / "payload-ran"
    folder = _write_step(tmp_path / "ckpt", 2, publish=False)
    torch.save({"module": {"lm.x": torch.zeros(1)}, "extra": _Payload(marker)}, folder / "mp_rank_00_model_states.pt")
    folder = ckpt.publish(tmp_path / "ckpt", 2)   # the manifest matches: the hash alone does not make it safe
    with pytest.raises(UserError, match="objects other than tensors"):
        ckpt.consolidated_state_dict(folder)
    # DeepSpeed's own loads pass weights_only=False; inside the guard they are weights-only too
    with pytest.raises(UserError, match="objects other than tensors"), ckpt.weights_only_loads():
        torch.load(folder / "mp_rank_00_model_states.pt", weights_only=False)
    assert not marker.exists()


def test_resume_refuses_another_tokenizer_or_model_before_loading(tmp_path):
    folder = _write_step(tmp_path, 2)
    ckpt.check_tokenizer(folder, TOKENIZER)
    ckpt.check_model_config(folder, _model_config())
    with pytest.raises(UserError, match=r"trained on shards of tokenizer tok-a, but data.shards holds tokenizer tok-b"):
        ckpt.check_tokenizer(folder, "tok-b")
    wider = {**_model_config(), "hidden_size": 64, "transformers_version": "0"}
    with pytest.raises(UserError, match=r"hidden_size: 32 in the checkpoint, 64 now") as err:
        ckpt.check_model_config(folder, wider)
    assert "transformers_version" not in str(err.value)


def test_resume_refuses_checkpoints_of_a_run_started_from_other_weights(tmp_path):
    pretraining = _write_step(tmp_path / "pre", 2, init_from="")
    ckpt.check_init(pretraining, "")
    with pytest.raises(UserError, match=r"global_step2/recbase.json: the checkpoint belongs to a run started from "
                                        r"random weights, this one starts from .*hf; choose another checkpoint.dir"):
        ckpt.check_init(pretraining, str(tmp_path / "hf"))
    finetuning = _write_step(tmp_path / "ft", 2, init_from=str(tmp_path / "hf"))
    ckpt.check_init(finetuning, str(tmp_path / "x" / ".." / "hf"))   # the same folder, spelled otherwise
    with pytest.raises(UserError, match=r"started from .*hf, this one starts from random weights"):
        ckpt.check_init(finetuning, "")


def test_a_fine_tuning_resumes_in_a_moved_run_folder_from_the_same_weights_only(tmp_path):
    """The fine-tuning recorded its initial weights by content, so the moved run folder (its export under a new
    path) still resumes; other weights under the old path's name do not."""
    from recbase.train.export import export_hf

    run = tmp_path / "run"
    export_hf(_write_step(run / "checkpoints", 2), run / "hf")
    _write_step(run / "finetune", 5, init_from=str(run / "hf"))
    moved = tmp_path / "moved"
    run.rename(moved)
    ckpt.check_init(moved / "finetune" / "global_step5", str(moved / "hf"))
    export_hf(_write_step(tmp_path / "other", 4), tmp_path / "other_hf")
    with pytest.raises(UserError, match=r"started from .*run/hf, this one starts from .*other_hf"):
        ckpt.check_init(moved / "finetune" / "global_step5", str(tmp_path / "other_hf"))
    assert ckpt.weights_identity(moved / "checkpoints") == ckpt.weights_identity(moved / "checkpoints" / "global_step2")
    assert ckpt.weights_identity(tmp_path / "missing") is None


def test_export_records_weight_hashes_and_refuses_a_flipped_bit(tmp_path):
    from recbase.train.export import export_hf, load_model

    folder = _write_step(tmp_path / "ckpt", 2)
    out = export_hf(folder, tmp_path / "hf")
    meta = json.loads((out / "recbase.json").read_text())
    assert set(meta["weights_sha256"]) == {"model.safetensors"}
    model, _ = load_model(out)
    weights = out / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0x10                                   # a bit inside the last tensor's values
    weights.write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"model.safetensors: SHA-256 .* does not match .*weights_sha256"):
        load_model(out)
    meta.pop("weights_sha256")
    (out / "recbase.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="no 'weights_sha256'"):
        load_model(out)


def test_export_replaces_an_existing_folder_only_with_overwrite(tmp_path, capsys):
    from recbase import cli
    from recbase.train.export import check_replaceable, export_hf

    folder = _write_step(tmp_path / "ckpt", 2)
    out = export_hf(folder, tmp_path / "hf")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    later = _write_step(tmp_path / "ckpt", 4)
    with pytest.raises(UserError, match=r"hf: already holds a model, .* pass --overwrite to replace it"):
        export_hf(later, out)
    capsys.readouterr()
    assert cli.main(["export", str(later), str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {out}: already holds a model") and err.count("\n") == 1
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before   # refused before anything was written
    assert cli.main(["export", str(later), str(out), "--overwrite"]) == 0
    assert json.loads((out / ckpt.META_FILE).read_text())["step"] == 4

    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("mine")
    with pytest.raises(UserError, match=r"notes: already holds other files"):
        export_hf(later, other)
    (tmp_path / "empty").mkdir()
    assert export_hf(later, tmp_path / "empty").is_dir()

    # the training run that wrote an export may replace it when it exports again; another run may not
    meta = json.loads((out / ckpt.META_FILE).read_text())
    meta["train_config"] = {"checkpoint": {"dir": str(tmp_path / "ckpt")}}
    (out / ckpt.META_FILE).write_text(json.dumps(meta))
    check_replaceable(out, own_checkpoints=tmp_path / "ckpt")
    with pytest.raises(UserError, match=r"set checkpoint.export_dir to another folder"):
        check_replaceable(out, own_checkpoints=tmp_path / "other_run" / "ckpt")


def test_a_runs_export_stays_its_own_from_another_directory_or_a_copied_folder(tmp_path, monkeypatch):
    """The export names its checkpoints folder relative to the directory the run started in; from another working
    directory, or in a copy of the run folder, the checkpoint it was made from still identifies it."""
    import shutil

    from recbase.train.export import check_replaceable, export_hf

    monkeypatch.chdir(tmp_path)
    run = tmp_path / "runs" / "tiny"
    export_hf(_write_step(run / "checkpoints", 3, recorded_dir="runs/tiny/checkpoints"), run / "hf")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    check_replaceable(run / "hf", own_checkpoints=Path("../runs/tiny/checkpoints"))
    moved = tmp_path / "moved"
    shutil.copytree(run, moved)
    check_replaceable(moved / "hf", own_checkpoints=moved / "checkpoints")

    other = tmp_path / "other"
    _write_step(other / "checkpoints", 3, recorded_dir="runs/other/checkpoints")   # the same step of another run
    for foreign in (other / "checkpoints", tmp_path / "missing"):
        with pytest.raises(UserError, match=r"hf: already holds a model, .* set checkpoint.export_dir"):
            check_replaceable(moved / "hf", own_checkpoints=foreign)


def test_training_refuses_an_export_folder_it_did_not_write_before_any_work(tmp_path):
    from shards_world import make_world

    from recbase.data.shards import ShardConfig, build_shards
    from recbase.train.config import load_train_config
    from recbase.train.loop import Trainer

    world = make_world(tmp_path / "world", n_users=10, n_items=20)
    shards = build_shards(ShardConfig(data_dir=str(world / "data"), codes_path=str(world / "codes.parquet"),
                                      out_dir=str(world / "shards"), name="s"))
    served = tmp_path / "served"
    served.mkdir()
    (served / "config.json").write_text("{}")
    cfg = load_train_config("tiny.json", [f"data.shards={shards}", f"checkpoint.dir={tmp_path / 'ckpt'}",
                                          f"checkpoint.export_dir={served}"])
    with pytest.raises(UserError, match=r"served: already holds other files.*checkpoint.export_dir"):
        Trainer(cfg)
    assert not torch.distributed.is_initialized() and not (tmp_path / "ckpt").exists()
