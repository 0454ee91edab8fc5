"""The pipeline runner on a tiny world plus one generic dataset, without the model stages: names checked before
any work, a crash at any stage continues to the same bytes, the same inputs give the same bytes in any process and
folder, --fresh deletes only the runner's own files; the head's recency biases fitted on the dataset's domain
alone, up to the arguments pretraining would start with, and through a two-step pretraining."""
import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from recbase.cli import main
from recbase.pipeline import (HASH_CACHE, DatasetConfig, PipelineConfig, PipelineError, Stages, check_config,
                              fingerprint, load_pipeline_config, run_pipeline)
from recbase.train.head_recency import read_recency

TOKENIZER = ["kind=rqkmeans", "rqkmeans.iters=5"]   # the stages, not the tokenizer's quality, are under test


def _shop(root: Path) -> Path:
    """A generic CSV dataset: 40 items, 30 users with 6 to 11 interactions each."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    words = ["red", "blue", "mug", "cup", "lamp", "desk", "chair", "pen"]
    (root / "items.csv").write_text("sku,name\n" + "".join(
        f"s{i},{words[i % 8]} {words[(i * 3) % 8]} {i}\n" for i in range(40)))
    rows = [f"u{u},s{rng.integers(40)},{1000 + t}" for u in range(30) for t in range(6 + u % 6)]
    (root / "events.csv").write_text("user,sku,ts\n" + "\n".join(rows) + "\n")
    return root


def _movielens(root: Path) -> Path:
    """A MovieLens folder in its published CSV layout: 30 movies, 40 users with 3 to 9 ratings each."""
    rng = np.random.default_rng(1)
    root.mkdir(parents=True, exist_ok=True)
    (root / "movies.csv").write_text("movieId,title,genres\n" + "".join(
        f"{m},Movie {m} ({1990 + m % 20}),{'Comedy|Drama' if m % 2 else 'Action'}\n" for m in range(1, 31)))
    (root / "ratings.csv").write_text("userId,movieId,rating,timestamp\n" + "".join(
        f"{u},{rng.integers(1, 31)},{rng.integers(1, 6)}.0,{964980000 + 60 * t}\n"
        for u in range(1, 41) for t in range(3 + u % 7)))
    return root


def _config(tmp_path: Path, **changes) -> PipelineConfig:
    shop = {"domain": "shop", "format": "generic", "path": str(_shop(tmp_path / "src" / "shop")),
            "min_user_interactions": 0,
            "spec": {"items": "items.csv", "interactions": "events.csv", "item_id": "sku", "user_id": "user",
                     "time": "ts", "text_fields": ["name"], "kind": "product"}}
    cfg = dict(out=str(tmp_path / "out"), datasets=[shop], pretrain_domains=["movies", "shop"],
               heldout_domains=["news"], items_per_domain=60, users_per_domain=30, embedder="hashing",
               codebook_size=16, tokenizer_overrides=TOKENIZER, train_steps=0, shards_name="corpus",
               tokens_per_shard=2000)
    cfg.update(changes)
    path = tmp_path / "pipeline.json"
    path.write_text(json.dumps(cfg))
    return load_pipeline_config(str(path), [])


def _outputs(out: Path) -> dict[str, bytes]:
    """The bytes of every file the later stages read (stamps and timings aside)."""
    files = [out / "codes.parquet", *sorted((out / "shards").rglob("*.tar")),
             *sorted((out / "shards").rglob("*.parquet")), *sorted((out / "embeddings").glob("*.npy")),
             *sorted((out / "data").rglob("*.parquet"))]
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in files}


def test_domain_names_are_checked_before_any_work(tmp_path, capsys):
    cfg = _config(tmp_path, pretrain_domains=["movis", "shop"])
    with pytest.raises(PipelineError) as info:
        check_config(cfg)
    message = str(info.value)
    assert "unknown domain 'movis'; did you mean 'movies'?" in message
    assert f"--out {tmp_path / 'out' / 'data'} --domain movis" in message
    assert main(["run", "--config", str(tmp_path / "pipeline.json"), "pretrain_domains=[\"movis\", \"shop\"]",
                 'datasets=[{"domain": "shop", "preset": "amazon-book-2014", "path": "nowhere"}]']) == 2
    out = capsys.readouterr().err
    assert "unknown preset 'amazon-book-2014'; did you mean 'amazon-books-2014'?" in out
    assert "path nowhere not found" in out
    assert not (tmp_path / "out").exists()


def test_summary_per_domain(tmp_path):
    record = run_pipeline(_config(tmp_path))
    out = tmp_path / "out"
    rows = record["domains"]
    assert list(rows) == ["movies", "shop", "news"]
    assert rows["shop"]["role"] == "pretrain" and rows["news"]["role"] == "held-out"
    assert (rows["shop"]["users"], rows["shop"]["items"], rows["shop"]["interactions"]) == (30, 40, 255)
    manifest = json.loads((out / "shards" / "corpus" / "manifest.json").read_text())
    assert rows["shop"]["train_tokens"] == manifest["domains"]["shop"]["train"]["tokens"] > 0
    assert rows["news"]["eval_pairs"] == manifest["eval_sets"]["news"]["pairs"] > 0
    assert 1 <= rows["movies"]["level1_used"] <= 16 and 0 <= rows["movies"]["collision_rate"] < 1
    for name in ("summary.json", "summary.md", "summary.png"):
        assert (out / "summary" / name).stat().st_size > 0
    md = (out / "summary" / "summary.md").read_text()
    assert "| shop | pretrain | 30 | 40 |" in md and "| tokenizer |" in md


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    root = tmp_path_factory.mktemp("uninterrupted")
    record = run_pipeline(_config(root))
    return record, _outputs(root / "out")


@pytest.mark.parametrize("crash_in", [
    "recbase.tokenizer.embed.embed_domain", "recbase.data.shards.write_shard",
    pytest.param("recbase.data.ingest_stream.finalize", marks=pytest.mark.slow),
    pytest.param("recbase.tokenizer.train.train_from_folders", marks=pytest.mark.slow)])
def test_a_crash_at_any_stage_continues_to_the_same_bytes(tmp_path, monkeypatch, crash_in, uninterrupted):
    reference, expected = uninterrupted

    module_name, function = crash_in.rsplit(".", 1)
    module = __import__(module_name, fromlist=[function])
    real, calls = getattr(module, function), []

    def crash_on_second_call(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2 or function in ("finalize", "train_from_folders"):
            if function == "train_from_folders":
                real(*args, **kwargs)     # the artifact is written, then the process dies before the rename
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(module, function, crash_on_second_call)
    cfg = _config(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(cfg)
    monkeypatch.setattr(module, function, real)
    again = run_pipeline(cfg)
    assert _outputs(tmp_path / "out") == expected
    assert again["domains"] == reference["domains"]


def test_the_same_inputs_give_the_same_bytes_in_any_process_and_folder(tmp_path):
    """An ingest that samples users, then tables, embeddings, tokenizer, codes, shards and eval sets, run in this
    process and in another of another hash seed (``PYTHONHASHSEED``), into different folders: every file is
    byte-equal."""
    _config(tmp_path, heldout_domains=["news", "ml"])
    source = _movielens(tmp_path / "src" / "ml-tiny")

    def commands(out: Path) -> list[list[str]]:
        return [["ingest", "movielens", str(source), "--out", str(out / "data"), "--domain", "ml",
                 "--min-user-interactions", "0", "--max-users", "25"],
                ["run", "--config", str(tmp_path / "pipeline.json"), f"out={out}"]]

    here, there = tmp_path / "here", tmp_path / "there"
    assert [main(args) for args in commands(here)] == [0, 0]
    other_seed = "2" if os.environ.get("PYTHONHASHSEED") == "1" else "1"
    done = subprocess.run([sys.executable, "-c", "import json, sys; from recbase.cli import main; "
                           "sys.exit(any(main(args) for args in json.loads(sys.argv[1])))",
                           json.dumps(commands(there))],
                          env={**os.environ, "PYTHONHASHSEED": other_seed}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    first, second = _outputs(here), _outputs(there)
    assert {"data/ml/interactions.parquet", "embeddings/ml.npy", "shards/corpus/eval/ml.parquet",
            "shards/corpus/eval/news.parquet", "codes.parquet"} <= set(first)
    assert [name for name in first if first[name] != second.get(name)] == []
    assert (here / "tokenizer" / "config.json").read_bytes() == (there / "tokenizer" / "config.json").read_bytes()


def test_changed_option_reruns_only_the_stages_after_it(tmp_path, capsys):
    run_pipeline(_config(tmp_path))
    stamps = tmp_path / "out" / "stages"
    before = {p.name: p.read_text() for p in stamps.glob("*.json")}
    capsys.readouterr()
    run_pipeline(_config(tmp_path, codebook_size=8))
    printed = capsys.readouterr().out
    after = {p.name: p.read_text() for p in stamps.glob("*.json")}
    unchanged = {n for n in before if before[n] == after[n]}
    assert unchanged >= {f"{stage}-{d}.json" for stage in ("tables", "embed") for d in ("movies", "shop", "news")}
    assert {"tokenizer.json", "codes.json", "shards.json"}.isdisjoint(unchanged)
    assert "[embed-shop] up to date" in printed
    assert json.loads((tmp_path / "out" / "summary" / "summary.json").read_text())["domains"]["movies"][
        "codebook_size"] == 8


def test_a_copied_run_folder_is_up_to_date_and_a_changed_table_still_counts(tmp_path, capsys):
    """``cp -r`` of a run folder, then the same config with ``out=`` the copy: every stage is up to date and no
    output is written again; a table changed in the copy reruns the stages that read it."""
    cfg = _config(tmp_path)
    first = run_pipeline(cfg)
    copy = tmp_path / "elsewhere" / "copy"
    shutil.copytree(tmp_path / "out", copy)
    written = {p: p.stat().st_mtime_ns for p in copy.rglob("*") if p.is_file()}
    capsys.readouterr()
    again = run_pipeline(replace(cfg, out=str(copy)))
    printed = capsys.readouterr().out
    stages = sorted(p.name.removesuffix(".json") for p in (copy / "stages").glob("*.json")
                    if ".started" not in p.name and p.name != HASH_CACHE)
    assert len(stages) == 9 and [s for s in stages if f"[{s}] up to date" not in printed] == []
    rewritten = sorted(p.relative_to(copy).as_posix() for p, t in written.items() if p.stat().st_mtime_ns != t)
    assert rewritten == ["pipeline_config.json", "summary.json", "summary/summary.json", "summary/summary.md",
                         "summary/summary.png"]
    assert again["domains"] == first["domains"] and _outputs(copy) == _outputs(tmp_path / "out")
    assert json.loads((copy / "stages" / "shards.json").read_text())["outputs"] == ["<out>/shards/corpus"]

    table = copy / "data" / "news" / "interactions.parquet"
    pq.write_table(pq.read_table(table).slice(1), table)
    run_pipeline(_config(tmp_path, out=str(copy)))
    printed = capsys.readouterr().out
    assert "[tokenizer] up to date" in printed and "[embed-shop] up to date" in printed
    assert "[embed-news] up to date" not in printed and "[shards] up to date" not in printed
    eval_set = "shards/corpus/eval/news.parquet"
    assert _outputs(copy)[eval_set] != _outputs(tmp_path / "out")[eval_set]


def test_stamps_of_paths_as_given_still_hold_in_place_and_in_a_copy(tmp_path, monkeypatch, capsys):
    """Stamps written before paths were run-relative fingerprint the paths as given: the folder they were made in,
    and a copy of it, stay up to date (no model trained again), and ``--fresh`` still finds their outputs."""

    cfg = _config(tmp_path)
    with monkeypatch.context() as m:
        m.setattr(Stages, "in_run", lambda self, value, folder=None: value)
        run_pipeline(cfg)
    assert json.loads((tmp_path / "out" / "stages" / "shards.json").read_text())["outputs"] == [
        (tmp_path / "out" / "shards" / "corpus").as_posix()]
    copy = tmp_path / "copy"
    shutil.copytree(tmp_path / "out", copy)
    for out in (tmp_path / "out", copy):
        before = {p.name: p.read_bytes() for p in (out / "stages").glob("*.json")}
        capsys.readouterr()
        run_pipeline(replace(cfg, out=str(out)))
        assert capsys.readouterr().out.count(" up to date (") == 9
        assert {p.name: p.read_bytes() for p in (out / "stages").glob("*.json")} == before
    assert tmp_path / "out" / "shards" / "corpus" in Stages(tmp_path / "out").owned_outputs()
    assert Stages(copy).owned_outputs() == []   # the copy's old stamps name the original's files


def test_fresh_deletes_only_the_runners_files(tmp_path):
    out = tmp_path / "out"
    mine = out / "data" / "mine"
    mine.mkdir(parents=True)
    (mine / "items.parquet").write_bytes(b"not the runner's")
    (out / "notes.txt").write_text("keep me")
    (out / "shards" / "other").mkdir(parents=True)
    run_pipeline(_config(tmp_path))
    (out / "embeddings" / "stale.npy").write_bytes(b"x")
    run_pipeline(_config(tmp_path), fresh=True)
    assert (out / "notes.txt").read_text() == "keep me" and (out / "shards" / "other").is_dir()
    assert (mine / "items.parquet").read_bytes() == b"not the runner's"
    assert not (out / "embeddings" / "stale.npy").exists()
    assert (out / "shards" / "corpus" / "manifest.json").exists()


def _up_to_date(printed: str) -> list[str]:
    """The stages a run printed as up to date."""
    return sorted(line[1:line.index("]")] for line in printed.splitlines()
                  if line.startswith("[") and "] up to date (" in line)


NINE_STAGES = sorted([f"{stage}-{d}" for stage in ("tables", "embed") for d in ("movies", "news", "shop")]
                     + ["codes", "shards", "tokenizer"])


def test_an_edited_dataset_file_ingests_again_and_the_changed_table_reruns_what_reads_it(tmp_path, capsys):
    """A dataset file edited in place, the config unchanged: that domain is ingested again, the other domains stay
    up to date, and every stage that reads the changed table (its embeddings, the tokenizer trained on it, codes,
    shards) runs again."""
    cfg = _config(tmp_path)
    run_pipeline(cfg)
    before = _outputs(tmp_path / "out")
    events = tmp_path / "src" / "shop" / "events.csv"
    events.write_text("".join(events.read_text().splitlines(keepends=True)[:-30]))
    capsys.readouterr()
    run_pipeline(cfg)
    printed = capsys.readouterr().out
    assert "[tables-shop] changed since it ran: events.csv" in printed
    assert _up_to_date(printed) == ["embed-movies", "embed-news", "tables-movies", "tables-news"]
    after = _outputs(tmp_path / "out")
    assert after["data/shop/items.parquet"] == before["data/shop/items.parquet"]
    assert after["data/shop/interactions.parquet"] != before["data/shop/interactions.parquet"]
    assert after["embeddings/news.npy"] == before["embeddings/news.npy"]

    events.unlink()   # a missing file: one line naming it, before the stage clears the tables it made
    assert main(["run", "--config", str(tmp_path / "pipeline.json")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {events}: file not found"
    assert _outputs(tmp_path / "out") == after


def test_dataset_files_are_hashed_once_and_a_touch_reruns_nothing(tmp_path, monkeypatch, capsys):
    """The hashes are cached by path, size and mtime: a second run reads no dataset file to hash it; a touched file
    (new mtime, same bytes) is hashed again and nothing runs again."""
    import recbase.data.dataset_files as dataset_files

    hashed, real = [], dataset_files.sha256_file
    monkeypatch.setattr(dataset_files, "sha256_file", lambda path: hashed.append(Path(path).name) or real(path))
    cfg = _config(tmp_path)
    run_pipeline(cfg)
    assert sorted(hashed) == ["events.csv", "items.csv"]
    stamps = tmp_path / "out" / "stages"
    before = {p.name: p.read_bytes() for p in stamps.glob("*.json") if p.name != HASH_CACHE}

    hashed.clear()
    capsys.readouterr()
    run_pipeline(cfg)
    assert hashed == [] and _up_to_date(capsys.readouterr().out) == NINE_STAGES

    items = tmp_path / "src" / "shop" / "items.csv"
    stat = items.stat()
    os.utime(items, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    run_pipeline(cfg)
    assert hashed == ["items.csv"] and _up_to_date(capsys.readouterr().out) == NINE_STAGES
    assert {p.name: p.read_bytes() for p in stamps.glob("*.json") if p.name != HASH_CACHE} == before
    cached = json.loads((stamps / HASH_CACHE).read_text())[str(items.resolve())]
    assert (cached["size"], cached["mtime_ns"]) == (stat.st_size, stat.st_mtime_ns + 10**9)


def test_a_dataset_stamp_without_file_hashes_still_holds_and_then_gains_them(tmp_path, monkeypatch, capsys):
    """A stamp written before the runner hashed a dataset's files (its fingerprint is the config entry's alone) is
    up to date while the entry is unchanged, so an upgrade ingests nothing again; it is rewritten with the files'
    hashes, so that the next edit counts."""
    import recbase.data.dataset_files as dataset_files

    cfg = _config(tmp_path)
    with monkeypatch.context() as m:   # the runner as it was: no file hashes for the stage
        m.setattr(dataset_files, "dataset_hashes", lambda *args: None)
        run_pipeline(cfg)
    stamp = tmp_path / "out" / "stages" / "tables-shop.json"
    old = json.loads(stamp.read_text())
    assert "files" not in old
    capsys.readouterr()
    run_pipeline(cfg)
    assert _up_to_date(capsys.readouterr().out) == NINE_STAGES
    new = json.loads(stamp.read_text())
    assert new["seconds"] == old["seconds"] and sorted(new["files"]) == ["events.csv", "items.csv"]

    items = tmp_path / "src" / "shop" / "items.csv"
    items.write_text(items.read_text().replace("s0,", "s0b,"))
    run_pipeline(cfg)
    printed = capsys.readouterr().out
    assert "[tables-shop] changed since it ran: items.csv" in printed and "[tables-shop] up to date" not in printed


def test_a_reader_that_names_no_files_is_known_by_its_folders_files(tmp_path, capsys):
    """MovieLens options name no files, so its dataset is known by the files directly in its folder: a file there
    that the reader does not read, added or changed, ingests again into the same tables and nothing after runs
    again; a file in a subfolder is not looked at; a ratings file edited in place reruns what reads it."""
    cfg = _config(tmp_path, heldout_domains=["news", "ml"])
    source = _movielens(tmp_path / "src" / "ml")
    cfg.datasets.append(DatasetConfig(domain="ml", format="movielens", path=str(source), min_user_interactions=0))
    run_pipeline(cfg)
    before = _outputs(tmp_path / "out")
    (source / "README.txt").write_text("MovieLens, a few rows\n")
    (source / "old").mkdir()
    (source / "old" / "ratings.csv").write_text("userId,movieId,rating,timestamp\n")
    capsys.readouterr()
    run_pipeline(cfg)
    printed = capsys.readouterr().out
    assert "[tables-ml] changed since it ran: README.txt" in printed
    assert _up_to_date(printed) == sorted(set(NINE_STAGES + ["embed-ml"]))
    assert _outputs(tmp_path / "out") == before

    ratings = source / "ratings.csv"
    ratings.write_text(ratings.read_text().replace(",964980000\n", ",964970000\n"))
    run_pipeline(cfg)
    printed = capsys.readouterr().out
    assert "[tables-ml] changed since it ran: ratings.csv" in printed
    assert "[embed-ml] up to date" not in printed and "[shards] up to date" not in printed


# ----------------------------------------------------------------- the head's recency biases, fitted before pretraining


class _Pretraining(Exception):
    """Where the runner would start pretraining."""


def _until_pretraining(cfg: PipelineConfig, monkeypatch) -> list[str]:
    """Run ``cfg`` up to pretraining; the arguments of the ``recbase pretrain`` it would start."""
    started = []

    def start(command, *args):
        started.append([command, *args])
        raise _Pretraining

    monkeypatch.setattr("recbase.pipeline.run_command", start)
    with pytest.raises(_Pretraining):
        run_pipeline(cfg)
    assert started[0][0] == "pretrain"
    return started[0][1:]


def _pretrain_fingerprint(out: Path) -> str:
    return json.loads((out / "stages" / "pretrain.started.json").read_text())["fingerprint"]


def test_the_recency_is_fitted_on_the_real_pretraining_domains_and_fixed_in_pretraining(tmp_path, monkeypatch,
                                                                                        capsys):
    """movies (the demo world, generated) and shop (a dataset): the fit reads shop only, with the run's seed, and
    pretraining gets its file; a rerun fits nothing again, and another fit (here more steps) gives pretraining
    another fingerprint though its arguments are the same."""
    import recbase.train.head_recency as head_recency

    monkeypatch.setattr(head_recency, "STEPS", 20)   # the stage, not the fit's quality, is under test
    cfg = _config(tmp_path, seed=3, train_steps=2, finetune_steps=0)
    out = tmp_path / "out"
    args = _until_pretraining(cfg, monkeypatch)
    path = out / "run" / "head_recency.json"
    assert args[-1] == f"model.embedding_head_recency={path}"
    saved = json.loads(path.read_text())
    assert (saved["domains"], saved["seed"], saved["steps"]) == (["shop"], 3, 20)
    assert read_recency(path).tolist() == pytest.approx(saved["biases"])
    first = _pretrain_fingerprint(out)

    capsys.readouterr()
    assert _until_pretraining(cfg, monkeypatch) == args
    assert "[head-recency] up to date" in capsys.readouterr().out
    assert _pretrain_fingerprint(out) == first

    monkeypatch.setattr(head_recency, "STEPS", 21)
    assert _until_pretraining(cfg, monkeypatch) == args
    assert "[head-recency] up to date" not in capsys.readouterr().out
    assert json.loads(path.read_text())["steps"] == 21 and _pretrain_fingerprint(out) != first


def test_tables_already_in_the_data_folder_count_as_real_only_when_an_ingest_wrote_them(tmp_path, monkeypatch):
    """The dev suite's runs share one data folder: the first generates the demo world there, the others find those
    tables already in ``<out>/data``; tables a user ingested there by hand sit beside them. The fit reads the
    ingested ones (and the config's dataset), never the generated ones."""
    import recbase.train.head_recency as head_recency
    from recbase.data.synthetic import generate_world

    monkeypatch.setattr(head_recency, "STEPS", 20)
    data = tmp_path / "out" / "data"
    generate_world(data, domains=["movies"], items_per_domain=60, users_per_domain=30)
    assert main(["ingest", "movielens", str(_movielens(tmp_path / "src" / "ml")), "--out", str(data), "--domain", "ml",
                 "--min-user-interactions", "0"]) == 0
    cfg = _config(tmp_path, pretrain_domains=["movies", "shop", "ml"], train_steps=2, finetune_steps=0)
    assert check_config(cfg) == {"shop": "dataset", "movies": "provided", "ml": "provided", "news": "world"}
    _until_pretraining(cfg, monkeypatch)
    assert json.loads((tmp_path / "out" / "run" / "head_recency.json").read_text())["domains"] == ["shop", "ml"]


@pytest.mark.parametrize("changes, line", [
    ({"head_recency": "learned"}, None),
    ({"datasets": [], "pretrain_domains": ["movies", "books"]},
     "[head-recency] recency biases learned: no pretraining domain comes from a dataset file (the demo world's are "
     "generated)"),
    ({"train_overrides": ["model.embedding_head_kind=linear"]},
     "[head-recency] recency biases learned: the fit is the attention head's, this run's head is linear")])
def test_without_a_fit_pretraining_is_started_as_before(tmp_path, monkeypatch, capsys, changes, line):
    """``head_recency=learned``, a run of the demo world alone, or a head that is not the attention head: no fit,
    no recency file for pretraining, and the pretraining stage has the fingerprint it had before the fit existed
    (its arguments and the shards'), so a run stamped then is still up to date."""
    cfg = _config(tmp_path, train_steps=2, finetune_steps=0, **changes)
    out = tmp_path / "out"
    capsys.readouterr()
    args = _until_pretraining(cfg, monkeypatch)
    printed = [s for s in capsys.readouterr().out.splitlines() if s.startswith("[head-recency]")]
    assert printed == ([line] if line else [])
    assert not any("embedding_head_recency" in a for a in args)
    assert not (out / "run" / "head_recency.json").exists() and not (out / "stages" / "head-recency.json").exists()
    shards = json.loads((out / "stages" / "shards.json").read_text())["fingerprint"]
    assert _pretrain_fingerprint(out) == fingerprint(*Stages(out).in_run((args, shards)))


def test_the_pretraining_stage_names_the_zero_stage_it_runs(tmp_path, monkeypatch, capsys):
    cfg = _config(tmp_path, train_steps=2, finetune_steps=0, head_recency="learned",
                  train_overrides=["deepspeed.zero_stage=0"])
    capsys.readouterr()
    _until_pretraining(cfg, monkeypatch)
    assert "5/8 pretraining (tiny.json, DeepSpeed ZeRO-0, CPU)" in capsys.readouterr().out


def test_a_bad_head_recency_is_a_config_error(tmp_path, capsys):
    _config(tmp_path)
    assert main(["run", "--config", str(tmp_path / "pipeline.json"), "head_recency=fitted"]) == 2
    assert "head_recency: 'fitted' is not real | learned" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_pretrained_head_keeps_the_fitted_recency(tmp_path, monkeypatch):
    """The whole run with a real pretraining: the exported model records the recency file and its head's biases
    are the file's."""
    import recbase.train.head_recency as head_recency
    from recbase.train.export import load_head_state, load_meta

    monkeypatch.setattr(head_recency, "STEPS", 20)
    cfg = _config(tmp_path, train_steps=2, finetune_steps=0,
                  train_overrides=["checkpoint.every_steps=0", "logging.valid_every_steps=0"])
    run_pipeline(cfg)
    path, hf = tmp_path / "out" / "run" / "head_recency.json", tmp_path / "out" / "run" / "hf"
    assert load_meta(hf)["train_config"]["model"]["embedding_head_recency"] == str(path)
    assert load_head_state(hf)["recency"].tolist() == pytest.approx(read_recency(path).tolist())
