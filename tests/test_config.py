"""JSON → dataclass configs: defaults, nesting, overrides, and errors that name the key and file."""
import json
from dataclasses import dataclass, field

import pytest

from recbase.config import ConfigError, load_config


@dataclass
class Optim:
    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])


@dataclass
class Cfg:
    name: str = "x"
    steps: int = 10
    fused: bool = False
    optim: Optim = field(default_factory=Optim)
    tag: str | None = None


def test_defaults_file_and_overrides(tmp_path):
    p = tmp_path / "c.json"
    p.write_text(json.dumps({"steps": 5, "optim": {"lr": 0.1}}))
    cfg = load_config(Cfg, p, ["optim.lr=3e-4", "fused=true", "name=run1", "tag=null"])
    assert cfg == Cfg(name="run1", steps=5, fused=True, optim=Optim(lr=3e-4), tag=None)
    assert load_config(Cfg) == Cfg()


def test_unknown_key_names_key_and_file(tmp_path):
    p = tmp_path / "c.json"
    p.write_text(json.dumps({"optim": {"lrr": 1}}))
    with pytest.raises(ConfigError, match=r"c\.json\.optim: unknown key\(s\) lrr"):
        load_config(Cfg, p)


def test_type_errors_and_bad_json(tmp_path):
    with pytest.raises(ConfigError, match="steps: expected an integer"):
        load_config(Cfg, None, ["steps=1.5"])
    with pytest.raises(ConfigError, match="not of the form key=value"):
        load_config(Cfg, None, ["steps"])
    p = tmp_path / "bad.json"
    p.write_text('{"steps": 1,}')
    with pytest.raises(ConfigError, match="bad.json: line 1"):
        load_config(Cfg, p)


def test_bare_name_found_in_search_dirs(tmp_path):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "small.json").write_text('{"steps": 2}')
    assert load_config(Cfg, "small.json", search_dirs=[tmp_path / "configs"]).steps == 2
    with pytest.raises(ConfigError, match="missing.json not found"):
        load_config(Cfg, "missing.json", search_dirs=[tmp_path / "configs"])
