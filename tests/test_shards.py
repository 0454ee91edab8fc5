"""Shard builder: round trip against the tables, byte-identical rebuilds, crash + rerun, task slices, bad shards."""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from shards_world import LEVELS, TOKENIZER_HASH, expected_sequences, make_world  # noqa: E402

from recbase.data import shards as shards_mod  # noqa: E402
from recbase.data.shard_format import ShardError, merge_manifests, read_manifest, read_shard  # noqa: E402
from recbase.data.shards import ShardConfig, build_shards, merge_build  # noqa: E402
from recbase.errors import UserError  # noqa: E402


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return make_world(tmp_path_factory.mktemp("world"))


def config(world: Path, out: Path, **kw) -> ShardConfig:
    base = dict(data_dir=str(world / "data"), heldout_domains=["news"], codes_path=str(world / "codes.parquet"),
                out_dir=str(out), tokens_per_shard=3000, tokens_per_block=700)
    base.update(kw)
    return ShardConfig(**base)


def read_users(root: Path, split: str = "train") -> dict[tuple[str, str], list[int]]:
    """(domain, user) -> tokens, read back through the loader's shard reader."""
    manifest = read_manifest(root)
    out = {}
    for shard in manifest["shards"]:
        if shard["split"] != split:
            continue
        for tokens, offsets, meta in read_shard(root, shard):
            for u, user in enumerate(meta["users"]):
                key = (meta["domain_names"][meta["domains"][u]], user)
                assert key not in out, f"user {key} appears twice"
                out[key] = tokens[offsets[u]:offsets[u + 1]].tolist()
    return out


def digests(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.suffix in (".tar", ".parquet")}


@pytest.mark.parametrize("holdout", [0, 1])
def test_round_trip_equals_tokens_computed_from_the_tables(world, tmp_path, holdout):
    root = build_shards(config(world, tmp_path, holdout=holdout))
    got = read_users(root)
    want = {(d, u): seq for d in ("books", "movies") for u, seq in expected_sequences(world, d, holdout).items()}
    assert got == want
    manifest = read_manifest(root, TOKENIZER_HASH)
    assert manifest["totals"]["train"]["tokens"] == sum(map(len, want.values()))
    assert manifest["vocab"]["levels"] == LEVELS
    if holdout:
        valid = read_users(root, "valid")
        assert all(valid[k][:len(v)] == v and len(valid[k]) == len(v) + LEVELS for k, v in want.items())


def test_rebuild_is_byte_identical_and_workers_do_not_change_bytes(world, tmp_path):
    a = digests(build_shards(config(world, tmp_path / "a")))
    b = digests(build_shards(config(world, tmp_path / "b", workers=2)))
    assert a == b and len([k for k in a if k.endswith(".tar")]) > 4


def dies_at(shard: int, error: BaseException):
    """A ``write_shard`` that raises ``error`` instead of writing its ``shard``-th shard, and the paths it was
    given."""
    real, calls = shards_mod.write_shard, []

    def write(path, blocks):
        calls.append(path)
        if len(calls) == shard:
            raise error
        real(path, blocks)
    return write, calls


def test_crash_after_first_shard_then_rerun_gives_the_same_shards(world, tmp_path, monkeypatch):
    clean = digests(build_shards(config(world, tmp_path / "clean")))
    real = shards_mod.write_shard
    failing, calls = dies_at(2, RuntimeError("injected crash"))
    monkeypatch.setattr(shards_mod, "write_shard", failing)
    with pytest.raises(RuntimeError, match="injected"):
        build_shards(config(world, tmp_path / "crash"))
    root = tmp_path / "crash" / "default"
    assert len(list(root.rglob("*.tar"))) == 1 and not list(root.rglob("*.tmp"))
    assert not (root / "manifest.json").exists()
    monkeypatch.setattr(shards_mod, "write_shard", real)
    built = []
    monkeypatch.setattr(shards_mod, "write_shard", lambda p, b: (built.append(p), real(p, b)))
    assert digests(build_shards(config(world, tmp_path / "crash"))) == clean
    assert calls[0] not in built and len(built) == len([k for k in clean if k.endswith(".tar")]) - 1


def test_two_task_slices_equal_one_full_build(world, tmp_path):
    full = read_users(build_shards(config(world, tmp_path / "full")))
    build_shards(config(world, tmp_path / "split", num_tasks=2, task_index=1))
    root = tmp_path / "split" / "default"
    assert not (root / "manifest.json").exists()        # task 0 has not run yet
    with pytest.raises(FileNotFoundError, match="task 0 of 2"):
        merge_manifests(root, 2)
    build_shards(config(world, tmp_path / "split", num_tasks=2, task_index=0))
    parts = read_users(root)
    assert parts == full
    names = [s["path"] for s in read_manifest(root)["shards"]]
    assert any("-t000-" in n for n in names) and any("-t001-" in n for n in names) and len(set(names)) == len(names)
    assert (root / "eval" / "news.parquet").exists()


def test_changed_config_or_inputs_in_the_same_folder_are_refused(world, tmp_path):
    build_shards(config(world, tmp_path))
    with pytest.raises(UserError, match="another build .*config key tokens_per_block: 700 then, 300 now"):
        build_shards(config(world, tmp_path, tokens_per_block=300))
    codes = tmp_path / "codes.parquet"
    codes.write_bytes((world / "codes.parquet").read_bytes())
    build_shards(config(world, tmp_path, name="copy", codes_path=str(codes)))
    import pyarrow.parquet as pq

    pq.write_table(pq.read_table(codes), codes, compression="none")   # same tokenizer hash, other bytes
    with pytest.raises(ValueError, match="another build.*inputs"):
        build_shards(config(world, tmp_path, name="copy", codes_path=str(codes)))


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_overwrite_replaces_another_build_only_once_the_new_one_is_complete(world, tmp_path, monkeypatch, capsys):
    from recbase.cli import main

    fresh = digests(build_shards(config(world, tmp_path / "fresh", tokens_per_block=300)))
    root = build_shards(config(world, tmp_path))
    old = _files(root)
    cfg = tmp_path / "shards.json"
    cfg.write_text(json.dumps({"data_dir": str(world / "data"), "codes_path": str(world / "codes.parquet"),
                               "out_dir": str(tmp_path), "heldout_domains": ["news"], "tokens_per_shard": 3000,
                               "tokens_per_block": 300}))
    capsys.readouterr()
    assert main(["shards", "--config", str(cfg)]) == 2
    assert "pass --overwrite (recbase shards) to replace them" in capsys.readouterr().err

    real = shards_mod.write_shard
    monkeypatch.setattr(shards_mod, "write_shard", dies_at(3, KeyboardInterrupt("killed"))[0])
    with pytest.raises(KeyboardInterrupt):
        main(["shards", "--config", str(cfg), "--overwrite"])
    monkeypatch.setattr(shards_mod, "write_shard", real)
    assert _files(root) == old                                          # nothing of the old build was touched
    assert len(list((tmp_path / ".default.overwrite").rglob("*.tar"))) == 2
    assert main(["shards", "--config", str(cfg), "--overwrite"]) == 0   # continues the new build, then swaps
    assert digests(root) == fresh and "wrote" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["default", "fresh", "shards.json"]
    assert main(["shards", "--config", str(cfg)]) == 0                  # now the folder's own build


def test_overwrite_with_several_tasks_swaps_at_the_merge(world, tmp_path):
    full = read_users(build_shards(config(world, tmp_path / "full", tokens_per_block=300)))
    root = build_shards(config(world, tmp_path))
    old = _files(root)
    for task in (1, 0):
        side = build_shards(config(world, tmp_path, tokens_per_block=300, num_tasks=2, task_index=task),
                            overwrite=True)
        assert side == tmp_path / ".default.overwrite" and _files(root) == old
    assert merge_build(config(world, tmp_path, tokens_per_block=300, num_tasks=2)) == root
    assert read_users(root) == full and not side.exists()


def test_a_copied_folder_is_the_same_build_and_a_changed_table_is_not(world, tmp_path):
    """Tables, codes and shards copied together elsewhere: the rerun there keeps every shard and eval set (inputs
    are known by content, not by path); a table changed in the copy is refused, named."""
    import shutil

    import pyarrow.parquet as pq

    run, moved = tmp_path / "run", tmp_path / "elsewhere" / "run"
    shutil.copytree(world, run)
    build_shards(config(run, run / "shards"))
    shutil.copytree(run, moved)
    written = {p: p.stat().st_mtime_ns for p in (moved / "shards").rglob("*") if p.suffix in (".tar", ".parquet")}
    build_shards(config(moved, moved / "shards"))
    assert written and all(p.stat().st_mtime_ns == t for p, t in written.items())
    assert digests(moved / "shards" / "default") == digests(run / "shards" / "default")
    table = moved / "data" / "books" / "interactions.parquet"
    pq.write_table(pq.read_table(table).slice(1), table)
    with pytest.raises(UserError, match=r"another build \(inputs \(books/interactions.parquet\) differ"):
        build_shards(config(moved, moved / "shards"))


def test_a_build_stamp_of_paths_as_given_still_holds_in_its_folder_and_a_moved_one(world, tmp_path):
    """build.json as builds wrote it before inputs were named by content (the folders in the config, the inputs
    keyed by path): a rerun of the same build goes on, in place and after a move; another build is refused."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(world, run)
    cfg = config(run, run / "shards")
    root = build_shards(cfg)
    stamp = json.loads((root / "build.json").read_text())
    stamp["config"].update(data_dir=cfg.data_dir, codes_path=cfg.codes_path, out_dir=cfg.out_dir)
    stamp["inputs"] = {(Path(cfg.codes_path) if name == "codes" else Path(cfg.data_dir) / name).as_posix(): digest
                       for name, digest in stamp["inputs"].items()}
    (root / "build.json").write_text(json.dumps(stamp))
    build_shards(cfg)
    moved = tmp_path / "moved"
    run.rename(moved)
    build_shards(config(moved, moved / "shards"))
    with pytest.raises(UserError, match="another build .*config key tokens_per_block: 700 then, 300 now"):
        build_shards(config(moved, moved / "shards", tokens_per_block=300))


def test_truncated_and_corrupt_shards_are_reported_by_name(world, tmp_path):
    root = build_shards(config(world, tmp_path))
    shard = read_manifest(root)["shards"][0]
    path = root / shard["path"]
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(ShardError, match=path.name):
        list(read_shard(root, shard))
    # Same size, garbage inside: the tar reader fails and the error still names the shard.
    path.write_bytes(data[:1024] + bytes(range(256)) * ((len(data) - 1024) // 256) + b"\0" * ((len(data) - 1024) % 256))
    with pytest.raises(ShardError, match=path.name):
        list(read_shard(root, shard))


def test_a_flipped_byte_is_caught_by_the_manifest_hash(world, tmp_path):
    """Same size, the tar still parses: only the payload hash tells, and the error names the shard."""
    root = build_shards(config(world, tmp_path))
    shard = read_manifest(root)["shards"][0]
    path = root / shard["path"]
    data = bytearray(path.read_bytes())
    data[600] ^= 0x01                                   # inside the first block's token payload
    path.write_bytes(bytes(data))
    with pytest.raises(ShardError, match=rf"{path.name}: SHA-256 does not match the manifest"):
        list(read_shard(root, shard))


def test_a_rerun_rebuilds_a_truncated_shard_instead_of_keeping_it(world, tmp_path):
    root = build_shards(config(world, tmp_path))
    before = read_manifest(root)["shards"]
    path = root / before[1]["path"]
    intact = path.read_bytes()
    path.write_bytes(intact[:len(intact) // 2])
    build_shards(config(world, tmp_path))
    assert path.read_bytes() == intact
    assert read_manifest(root)["shards"] == before
    list(read_shard(root, before[1]))


def test_manifest_counts_match_the_shards(world, tmp_path):
    root = build_shards(config(world, tmp_path))
    manifest = read_manifest(root)
    for shard in manifest["shards"]:
        blocks = list(read_shard(root, shard))
        assert len(blocks) == shard["blocks"]
        assert sum(len(t) for t, _, _ in blocks) == shard["tokens"]
        assert sum(len(m["users"]) for _, _, m in blocks) == shard["users"]
        assert (root / shard["path"]).stat().st_size == shard["bytes"]
    per_domain = sum(v["train"]["tokens"] for v in manifest["domains"].values())
    assert per_domain == manifest["totals"]["train"]["tokens"]
    assert json.loads((root / "build.json").read_text())["tokenizer_hash"] == TOKENIZER_HASH


def test_codes_with_a_bad_row_are_refused_naming_the_row(world, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(world / "codes.parquet")
    codes = table["codes"].to_pylist()
    codes[5] = [0, 1, 2, 9999]
    bad = table.set_column(2, "codes", pa.array(codes, pa.list_(pa.int32())))
    pq.write_table(bad.replace_schema_metadata(table.schema.metadata), tmp_path / "codes.parquet")
    with pytest.raises(ValueError, match=r"row 5, field 'codes'"):
        build_shards(config(world, tmp_path, codes_path=str(tmp_path / "codes.parquet")))


def test_empty_blocks_never_happen_and_assemble_matches_a_loop():
    from recbase.data.sequences import assemble
    from recbase.vocab import Vocab

    vocab = Vocab(2, 5)
    rng = np.random.default_rng(0)
    items = rng.integers(8, 18, size=(20, 2))
    starts, counts, eos = np.array([0, 3, 10]), np.array([3, 0, 10]), np.array([True, False, False])
    tokens, offsets = assemble(items, starts, counts, eos, vocab, np.dtype("<u2"))
    want = []
    for s, c, e in zip(starts, counts, eos):
        want.append([1] + items[s:s + c].ravel().tolist() + ([2] if e else []))
    assert [tokens[a:b].tolist() for a, b in zip(offsets[:-1], offsets[1:])] == want


def test_command_line_with_overrides_and_task_arguments(world, tmp_path, capsys):
    from recbase.cli import main

    cfg = tmp_path / "shards.json"
    cfg.write_text(json.dumps({"data_dir": str(world / "data"), "codes_path": str(world / "codes.parquet"),
                               "out_dir": str(tmp_path), "heldout_domains": ["news"]}))
    for task in (1, 0):
        assert main(["shards", "--config", str(cfg), "eval.max_pairs=40", "name=cli", "--task-index", str(task),
                     "--num-tasks", "2"]) == 0
    out = capsys.readouterr().out
    assert "task 1 of 2 done" in out and "eval news:" in out
    manifest = read_manifest(tmp_path / "cli")
    assert manifest["num_tasks"] == 2 and manifest["eval_sets"]["news"]["pairs"] <= 40
    assert main(["shards", "--config", str(cfg), "name=cli", "num_tasks=2", "--merge"]) == 0
    assert main(["shards", "--config", str(cfg), "tokens_per_shrad=5"]) == 2
    assert "unknown key(s) tokens_per_shrad" in capsys.readouterr().err


def test_eval_sets_record_the_tokenizer_and_the_training_domains(world, tmp_path):
    """What evaluation checks: the tokenizer hash, the tokenizer's training domains, the shards' domains."""
    import pyarrow.parquet as pq

    root = build_shards(config(world, tmp_path))
    meta = pq.read_schema(root / "eval" / "news.parquet").metadata
    assert meta[b"tokenizer_hash"].decode() == TOKENIZER_HASH
    assert json.loads(meta[b"shard_domains"]) == ["books", "movies"]
    assert json.loads(meta[b"tokenizer_train_domains"]) is None      # shards_world's codes do not record them


@pytest.mark.parametrize("key,value,allowed", [("tokens_per_block", 0, ">= 1"), ("eval.positives", 11, r"\[1, 10\]"),
                                               ("task_index", 2, r"\[0, 0\]")])
def test_config_out_of_range_names_the_key_and_the_range(world, tmp_path, key, value, allowed):
    cfg = config(world, tmp_path)
    if "." in key:
        setattr(cfg.eval, key.split(".")[1], value)
    else:
        setattr(cfg, key, value)
    with pytest.raises(UserError, match=rf"^{key}={value} is outside the allowed range {allowed}$"):
        build_shards(cfg)


def test_a_shard_set_name_is_a_plain_name(world, tmp_path):
    with pytest.raises(UserError, match=r"shard set name '\.\./x' is not a plain name"):
        build_shards(config(world, tmp_path / "out", name="../x"))
    assert not (tmp_path / "x").exists()


def test_sliced_build_equals_one_slice_build(world, tmp_path):
    """Reading the users in many small slices changes neither a byte of the shards nor the manifest."""
    whole = build_shards(config(world, tmp_path / "whole"))
    sliced = build_shards(config(world, tmp_path / "sliced", slice_rows=150))
    assert digests(sliced) == digests(whole)
    manifests = [read_manifest(r) for r in (whole, sliced)]
    assert [m["config"].pop("slice_rows") for m in manifests] == [2_000_000, 150]
    assert [m["config"].pop("out_dir") for m in manifests] == [str(tmp_path / "whole"), str(tmp_path / "sliced")]
    assert manifests[0] == manifests[1]
    assert not list(sliced.glob(".slices*"))                       # the slice files are gone


def test_sliced_task_builds_equal_one_full_build(world, tmp_path):
    full = read_users(build_shards(config(world, tmp_path / "full")))
    for task in (1, 0):
        build_shards(config(world, tmp_path / "split", num_tasks=2, task_index=task, slice_rows=100))
    assert read_users(tmp_path / "split" / "default") == full


KILL_ON_THIRD_SHARD = """
import os, signal
from recbase.data import shards
calls = []
real = shards.write_shard
def write_then_die(path, blocks):
    calls.append(path)
    if len(calls) == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    real(path, blocks)
shards.write_shard = write_then_die
shards.build_shards(shards.ShardConfig(**{config!r}))
"""


def test_a_sliced_build_killed_with_sigkill_resumes_to_the_same_bytes(world, tmp_path):
    import subprocess

    clean = digests(build_shards(config(world, tmp_path / "clean", slice_rows=150)))
    cfg = config(world, tmp_path / "killed", slice_rows=150)
    script = KILL_ON_THIRD_SHARD.format(config={k: v for k, v in vars(cfg).items() if k != "eval"})
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr[-2000:]
    root = tmp_path / "killed" / "default"
    assert len(list(root.rglob("*.tar"))) == 2 and list(root.glob(".slices-t000/*.arrow"))   # killed mid-build
    assert not (root / "manifest.json").exists()
    assert digests(build_shards(cfg)) == clean
    assert not list(root.glob(".slices*")) and not list(root.rglob("*.tmp*"))
    for shard in read_manifest(root)["shards"]:
        list(read_shard(root, shard))                              # every hash checks out
