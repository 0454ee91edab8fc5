"""Preset configs are found from any working directory, in a checkout and in a built wheel; the dry run says
where its vocabulary came from and prints its summary before the config."""
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path


from recbase.cli import main
from recbase.data.shard_format import FORMAT
from recbase.presets import CHECKOUT_DIR, preset_dir
from recbase.vocab import Vocab

REPO = Path(__file__).resolve().parents[1]


def _run(args: list[str], cwd: Path, pythonpath: Path = REPO) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_checkout_presets_are_launch_configs():
    assert preset_dir() == CHECKOUT_DIR == REPO / "launch" / "configs"
    assert (preset_dir() / "tiny.json").is_file()


def test_dry_run_from_another_directory_says_where_the_vocabulary_came_from(tmp_path, monkeypatch, capsys):
    done = _run([str(REPO / "launch" / "pretrain.py"), "--config", "tiny.json",
                 "--dry-run"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("world: 1 ranks")
    assert "the paper's default L=4 K=2048, because no shards were found at shards/demo" in done.stdout
    assert "resolved config" not in done.stdout.replace("(the resolved config: --verbose)", "")

    shards = tmp_path / "my_shards"
    shards.mkdir()
    vocab = Vocab(levels=4, codebook_size=64)
    (shards / "manifest.json").write_text(json.dumps({"format": FORMAT, "vocab": vocab.to_dict()}))
    monkeypatch.chdir(tmp_path)
    assert main(["pretrain", "--config", "tiny.json", "--dry-run", "--verbose", "data.shards=my_shards"]) == 0
    out = capsys.readouterr().out
    assert f"vocabulary: {vocab.model_vocab_size} (shard manifest found at my_shards/manifest.json: L=4 K=64)" in out
    assert out.index("parameters:") < out.index("resolved config:")
    assert '"shards": "my_shards"' in out


def test_a_built_wheel_carries_the_presets(tmp_path):
    """Build the wheel, unpack it as pip would into site-packages, and load a preset from elsewhere."""
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            "-w", str(tmp_path / "dist"), str(REPO)], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr
    site = tmp_path / "site"
    zipfile.ZipFile(next((tmp_path / "dist").glob("recbase-*.whl"))).extractall(site)
    assert sorted(p.name for p in (site / "recbase" / "configs").glob("*.json")) == \
        sorted(p.name for p in CHECKOUT_DIR.glob("*.json"))
    work = tmp_path / "elsewhere"
    work.mkdir()
    code = ("import recbase.presets as p; from recbase.train.config import load_train_config; "
            "print(p.preset_dir()); print(load_train_config('tiny.json').model.hidden_size)")
    done = _run(["-c", code], cwd=work, pythonpath=site)
    assert done.returncode == 0, done.stderr
    folder, hidden = done.stdout.split()
    assert Path(folder) == site / "recbase" / "configs"
    assert int(hidden) == json.loads((CHECKOUT_DIR / "tiny.json").read_text())["model"]["hidden_size"]
