"""The real datasets in ../shared/data, read end to end; expected counts come from each SOURCE.md."""
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from recbase.cli import main
from recbase.data.ingest import ingest, read_domain
from recbase.data.presets import load_preset, reader_options

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
MOVIELENS = DATA / "movielens-latest-small"
SCIENTIFIC = DATA / "amazon-scientific"

pytestmark = pytest.mark.skipif(not DATA.exists(), reason="shared datasets not present")


@pytest.fixture(scope="module")
def movielens():
    return read_domain("movielens", MOVIELENS, "movielens", min_user_interactions=0, max_history=0)


@pytest.fixture(scope="module")
def scientific():
    return read_domain("recbole", SCIENTIFIC, "scientific", min_user_interactions=0, max_history=0)


def test_movielens_counts_match_source(movielens):
    # SOURCE.md: 9,742 movies, 610 users, 100,836 ratings.
    s = movielens.summary
    assert (s.items, s.users, s.interactions) == (9742, 610, 100836)
    assert movielens.items.num_rows == 9742 and movielens.interactions.num_rows == 100836
    assert not s.dropped


def test_movielens_text_is_the_papers_format(movielens):
    rows = {r["item_id"]: r for r in movielens.items.select(["item_id", "text", "title", "genres"]).to_pylist()}
    assert rows["1"]["text"] == ('Describe a movie:\n{"title": "Toy Story (1995)", '
                                 '"genres": "Adventure | Animation | Children | Comedy | Fantasy"}')
    assert rows["1"]["genres"] == "Adventure | Animation | Children | Comedy | Fantasy"
    # "(no genres listed)" is left out of the text (movieId 114335 "La cravate (1957)" has none).
    assert rows["114335"]["text"] == 'Describe a movie:\n{"title": "La cravate (1957)"}'
    # UTF-8 kept as is (ensure_ascii=False).
    amelie = [r["text"] for r in rows.values() if "Amélie" in r["text"]]
    assert amelie and "\\u" not in amelie[0]


def test_movielens_interactions_sorted_by_user_then_time(movielens):
    df = movielens.interactions.to_pandas()
    assert list(df.columns) == ["domain", "user_id", "item_id", "timestamp"]
    assert (df["user_id"].to_numpy()[1:] >= df["user_id"].to_numpy()[:-1]).all()
    for _, g in df.groupby("user_id"):
        assert g["timestamp"].is_monotonic_increasing
    # SOURCE.md: ratings run from 1996-03-29 to 2018-09-24.
    assert df["timestamp"].min() >= 827_971_200 and df["timestamp"].max() < 1_537_833_600


def test_scientific_counts_match_source(scientific):
    # SOURCE.md: 4,385 items, 8,442 users, 59,384 interactions (history + 1 per user in test.inter).
    s = scientific.summary
    assert (s.items, s.users, s.interactions) == (4385, 8442, 59384)
    first = scientific.items.slice(0, 1).to_pylist()[0]
    assert first["item_id"] == "B0000223SI"
    assert first["text"].startswith('Describe a product:\n{"text": "PORTER-CABLE 740000801 4 1/2-Inch x 10yd')


def test_scientific_sequence_mapped_back_through_index_files(scientific):
    # test.inter line 1: user index 0 = ABW8NXS7SV55K, items 0..12 then 13; item 0 = B00TNNWMXI.
    df = scientific.interactions.to_pandas()
    user = df[df["user_id"] == "ABW8NXS7SV55K"]
    assert len(user) == 14
    assert user["timestamp"].tolist() == list(range(14))
    assert user["item_id"].iloc[0] == "B00TNNWMXI"


def test_paper_filter_drop_is_counted_and_printed(tmp_path, capsys):
    # Scientific users have 5+ interactions: at the paper's 15, most users go, and the summary says so.
    assert main(["ingest", "recbole", str(SCIENTIFIC), "--out", str(tmp_path), "--domain", "sci"]) == 0
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "sci" / "ingest_summary.json").read_text())
    dropped_users = 8442 - summary["users"]
    assert summary["users"] < 8442 and summary["interactions"] + sum(summary["dropped"].values()) == 59384
    assert f"users with < 15 interactions ({dropped_users:,} users)" in out
    inter = pq.read_table(tmp_path / "sci" / "interactions.parquet").to_pandas()
    assert inter.groupby("user_id").size().min() >= 15
    assert len(inter) == summary["interactions"]


def test_max_history_keeps_the_most_recent(tmp_path):
    ingest("movielens", MOVIELENS, tmp_path, domain="ml", min_user_interactions=0, max_history=20)
    df = pq.read_table(tmp_path / "ml" / "interactions.parquet").to_pandas()
    assert df.groupby("user_id").size().max() == 20
    full = read_domain("movielens", MOVIELENS, "ml", 0, 0).interactions.to_pandas()
    last = full.groupby("user_id").tail(20).reset_index(drop=True)
    assert df[["user_id", "item_id", "timestamp"]].equals(last[["user_id", "item_id", "timestamp"]])
    assert pq.read_table(tmp_path / "ml" / "items.parquet").num_rows == 9742


def _preset(name: str):
    preset = load_preset(name)
    fmt, options = reader_options(preset)
    return read_domain(fmt, DATA / name, preset.domain, min_user_interactions=0, max_history=0, **options)


# (preset, domain, users, items, interactions, first and last day, and SOURCE.md's sample: an item and user 100's
# first items with their timestamps)
SRB_FOLDERS = [
    ("amazon-books-2014", "amazon-books", 38_234, 38_519, 517_167, ("1997-03-25", "2014-07-22"),
     ("100", 'Describe a book:\n{"title": "The Prophet"}'), ["24686", "30219", "29863"],
     [1376870400, 1376870400, 1378252800]),
    ("amazon-health-2014", "amazon-health", 38_329, 18_427, 343_831, ("2000-12-09", "2014-07-23"),
     ("101", 'Describe a product:\n{"title": "Mighty Bright Rigid Page Magnifier"}'), ["10811", "10812", "14420"],
     [1369699200, 1369699200, 1370390400]),
    ("amazon-electronics-2014", "amazon-electronics", 28_566, 15_743, 241_198, ("1999-07-05", "2014-07-23"),
     ("102", 'Describe a product:\n{"title": "Barnes &amp; Noble Nook eReader - no 3G"}'), ["12887", "1309", "5000"],
     [1373068800, 1374278400, 1377302400]),
    ("food-com-recipes", "recipes", 17_813, 41_240, 555_618, ("2000-09-12", "2018-12-18"),
     ("101", 'Describe a recipe:\n{"title": "chicken breasts lombardi"}'), ["1119", "3578", "3617"],
     [1020297600, 1020643200, 1021852800]),
]


@pytest.mark.parametrize("name, domain, users, items, interactions, days, item, first, times", SRB_FOLDERS,
                         ids=[f[0] for f in SRB_FOLDERS])
def test_preset_counts_match_source(name, domain, users, items, interactions, days, item, first, times):
    import pandas as pd

    t = _preset(name)
    s = t.summary
    assert (t.domain, s.users, s.items, s.interactions) == (domain, users, items, interactions)
    assert not s.dropped
    texts = dict(zip(t.items.column("item_id").to_pylist(), t.items.column("text").to_pylist()))
    assert texts[item[0]] == item[1]
    df = t.interactions.to_pandas()
    user = df[df["user_id"] == "100"]
    assert user["item_id"].tolist()[:3] == first and user["timestamp"].tolist()[:3] == times
    day = pd.to_datetime(df["timestamp"], unit="s").dt.strftime("%Y-%m-%d")
    assert (day.min(), day.max()) == days


def test_beauty_preset_counts_match_source():
    # SOURCE.md: 22,363 users, 12,101 items (15 untitled, kept with a placeholder), 198,502 interactions.
    t = _preset("amazon-beauty-p5")
    assert (t.domain, t.summary.users, t.summary.items, t.summary.interactions) == ("amazon-beauty", 22363, 12101,
                                                                                    198502)
