"""The bucketed ingest against the whole-file one: the same rows in the same order and the same summary, from
chunks and buckets far smaller than the file."""
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from recbase.data.ingest import read_domain
from recbase.data.ingest_stream import ingest_stream
from recbase.data.presets import load_preset, reader_options
from recbase.data.readers import InputError
from recbase.data.readers.generic import load_spec

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _log(root: Path, bad: str = "") -> list[str]:
    """Users in no order, duplicate rows, items without metadata, short users, long histories."""
    rng = np.random.default_rng(1)
    root.mkdir(parents=True, exist_ok=True)
    (root / "items.csv").write_text("id,title\n" + "".join(f"i{i},thing {i}\n" for i in range(30)) + "i3,again\n")
    rows = [f"u{rng.integers(25)},i{rng.integers(33)},{rng.integers(1000, 1100)}" for _ in range(600)]
    rows += rows[:40] + [bad] * bool(bad)
    (root / "log.csv").write_text("user,id,t\n" + "\n".join(rows) + "\n")
    return ["items=items.csv", "interactions=log.csv", "item_id=id", "user_id=user", "time=t", "text_fields=title"]


@pytest.mark.parametrize("min_users, max_history, only_used", [(0, 0, False), (20, 15, True)])
def test_buckets_give_the_whole_file_tables(tmp_path, min_users, max_history, only_used):
    spec = load_spec(tmp_path, overrides=_log(tmp_path / "src", bad=",i1,1050") + ["bad_rows=skip"])
    whole = read_domain("generic", tmp_path / "src", "d", min_users, max_history, only_used, spec=spec)
    streamed = ingest_stream(tmp_path / "src", tmp_path / "out", "d", spec, min_user_interactions=min_users,
                             max_history=max_history, interacted_items_only=only_used, rows_per_bucket=50,
                             chunk_rows=64)
    inter = pq.read_table(tmp_path / "out" / "d" / "interactions.parquet")
    assert inter.num_rows > 0 and inter.to_pylist() == whole.interactions.to_pylist()
    assert pq.read_table(tmp_path / "out" / "d" / "items.parquet").to_pylist() == whole.items.to_pylist()
    assert {**streamed.to_dict(), "seconds": 0} == {**whole.summary.to_dict(), "seconds": 0}
    assert streamed.dropped["interaction rows with an empty user (log.csv)"] == 1
    assert json.loads((tmp_path / "out" / "d" / "ingest_summary.json").read_text())["users"] == streamed.users
    assert not list((tmp_path / "out" / "d").glob(".buckets-*"))


def test_a_bad_row_deep_in_the_file_names_its_line(tmp_path):
    spec = load_spec(tmp_path, overrides=_log(tmp_path / "src", bad="u1,i1,later"))
    with pytest.raises(InputError, match=r"log.csv, line 642, field 't': not a number: 'later'"):
        ingest_stream(tmp_path / "src", tmp_path / "out", "d", spec, chunk_rows=64)
    assert not (tmp_path / "out" / "d" / "interactions.parquet").exists()


@pytest.mark.skipif(not SHARED.exists(), reason="shared datasets not present")
def test_real_folder_in_buckets(tmp_path):
    preset = load_preset("amazon-electronics-2014")
    _, options = reader_options(preset)
    whole = read_domain("generic", SHARED / "amazon-electronics-2014", "e", 5, 2500, **options)
    streamed = ingest_stream(SHARED / "amazon-electronics-2014", tmp_path, "e", options["spec"],
                             min_user_interactions=5, rows_per_bucket=60_000, chunk_rows=50_000)
    assert streamed.interactions == whole.summary.interactions == 241_198
    assert pq.read_table(tmp_path / "e" / "interactions.parquet").equals(whole.interactions)


@pytest.mark.skipif(not SHARED.exists(), reason="shared datasets not present")
def test_movielens_csv_layout_in_buckets_gives_the_whole_file_tables(tmp_path):
    """MovieLens's ratings.csv streams too (ml-25m-sized logs): same rows, items and summary as the whole-file
    reader; `ingest` picks the streaming path for it."""
    from recbase.data.ingest import ingest
    from recbase.data.ingest_stream import streams

    src = SHARED / "movielens-latest-small"
    whole = read_domain("movielens", src, "m", 5, 2500)
    streamed = ingest_stream(src, tmp_path, "m", min_user_interactions=5, rows_per_bucket=30_000, chunk_rows=20_000,
                             fmt="movielens")
    assert pq.read_table(tmp_path / "m" / "interactions.parquet").equals(whole.interactions)
    assert pq.read_table(tmp_path / "m" / "items.parquet").equals(whole.items)
    assert {**streamed.to_dict(), "seconds": 0} == {**whole.summary.to_dict(), "seconds": 0}
    assert json.loads((tmp_path / "m" / "ingest_summary.json").read_text())["format"] == "movielens"
    assert streams("movielens", src) and not list((tmp_path / "m").glob(".buckets-*"))
    assert ingest("movielens", src, tmp_path / "via_ingest", "m", 5, 2500).to_dict()["interactions"] == 100_638


def test_a_bad_movielens_rating_deep_in_the_file_names_its_line(tmp_path):
    src = tmp_path / "ml"
    src.mkdir()
    (src / "movies.csv").write_text("movieId,title,genres\n1,Toy Story (1995),Animation|Comedy\n")
    (src / "ratings.csv").write_text("userId,movieId,rating,timestamp\n" + "1,1,4.0,964982703\n" * 150
                                     + "2,1,3.0,yesterday\n")
    with pytest.raises(InputError, match=r"ratings.csv, line 152, field 'timestamp': not a number: 'yesterday'"):
        ingest_stream(src, tmp_path / "out", "m", chunk_rows=64, fmt="movielens")
    (src / "ratings.csv").write_text("userId,movieId,rating\n1,1,4.0\n")
    with pytest.raises(InputError, match=r"ratings.csv, line 1, field 'timestamp': missing column"):
        ingest_stream(src, tmp_path / "out", "m", fmt="movielens")
