"""The P5 reader: the real Amazon Beauty folder against its SOURCE.md counts, and located errors on bad input."""
import json
from pathlib import Path

import pytest

from recbase.data.ingest import read_domain
from recbase.data.readers import InputError
from recbase.data.readers.p5 import UNTITLED

BEAUTY = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "amazon-beauty-p5"


def _write(folder: Path, lines: list[str], titles: dict[int, str | None]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sequential_data.txt").write_text("\r\n".join(lines) + "\r\n")
    id2item = {str(i): f"B{i:09d}" for i in titles}
    (folder / "datamaps.json").write_text(json.dumps({"id2item": id2item, "item2id": {}}))
    (folder / "item_titles.jsonl").write_text("".join(
        json.dumps({"p5_item_id": i, "asin": f"B{i:09d}", "title": t}) + "\n" for i, t in titles.items()))
    return folder


@pytest.mark.skipif(not BEAUTY.exists(), reason="shared datasets not present")
def test_beauty_counts_match_source():
    tables = read_domain("p5", BEAUTY, "beauty", min_user_interactions=0, max_history=0)
    s = tables.summary
    # SOURCE.md: 22,363 users, 12,101 items, 198,502 interactions; 15 items have no title.
    assert (s.users, s.items, s.interactions) == (22363, 12101, 198502)
    assert not s.dropped and s.extra[UNTITLED] == 15
    df = tables.interactions.to_pandas()
    lengths = df.groupby("user_id").size()
    # SOURCE.md: sequence length per user min 5, mean 8.88, max 204.
    assert (lengths.min(), round(lengths.mean(), 2), lengths.max()) == (5, 8.88, 204)
    # Line 1 is "1 1 2 3 4 5": P5 ids kept, timestamp = position on the line.
    first = df[df["user_id"] == "1"]
    assert first["item_id"].tolist() == ["1", "2", "3", "4", "5"] and first["timestamp"].tolist() == [0, 1, 2, 3, 4]
    items = tables.items.to_pandas().set_index("item_id")
    assert items.loc["1", "asin"] == "B004756YJA"
    assert items.loc["1", "title"] == "OPI Nail Lacquer, Simmer and Shimmer, 0.5-Fluid Ounce"
    assert items.loc["495", "text"] == 'Describe a product:\n{"title": "untitled product B001DJ2USM"}'
    # SOURCE.md: the untitled items are the targets of 21 test and 20 validation examples.
    untitled = set(items.index[items["title"].isna()])
    ordered = df.sort_values(["user_id", "timestamp"]).groupby("user_id")["item_id"]
    assert ordered.nth(-1).isin(untitled).sum() == 21 and ordered.nth(-2).isin(untitled).sum() == 20


def test_untitled_items_kept_and_order_is_the_line_order(tmp_path):
    folder = _write(tmp_path / "p5", ["7 3 1 2", "8 2 3"], {1: "Lipstick", 2: None, 3: "Mascara"})
    tables = read_domain("p5", folder, "toy", min_user_interactions=0, max_history=0)
    assert tables.summary.extra[UNTITLED] == 1 and tables.items.num_rows == 3
    df = tables.interactions.to_pandas()
    assert df[df["user_id"] == "7"]["item_id"].tolist() == ["3", "1", "2"]
    assert df[df["user_id"] == "8"]["timestamp"].tolist() == [0, 1]


@pytest.mark.parametrize("lines, titles, message", [
    (["1 1 9"], {1: "a"}, "sequential_data.txt, line 1, field 'item_id': item '9' (position 2) is not in"),
    (["1 1", "1 1"], {1: "a"}, "sequential_data.txt, line 2, field 'user_id': user 1 already on line 1"),
    (["1 1", "2"], {1: "a"}, "sequential_data.txt, line 2, field 'item_id': a user with no items"),
])
def test_bad_sequences_name_file_line_and_field(tmp_path, lines, titles, message):
    folder = _write(tmp_path / "p5", lines, titles)
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_domain("p5", folder, "toy", min_user_interactions=0, max_history=0)


def test_title_file_disagreeing_with_datamaps_is_an_error(tmp_path):
    folder = _write(tmp_path / "p5", ["1 1"], {1: "a"})
    (folder / "item_titles.jsonl").write_text(json.dumps({"p5_item_id": 1, "asin": "B0XXX", "title": "a"}) + "\n")
    with pytest.raises(InputError, match="item_titles.jsonl, line 1, field 'asin'"):
        read_domain("p5", folder, "toy", min_user_interactions=0, max_history=0)
    (folder / "datamaps.json").unlink()
    with pytest.raises(InputError, match="datamaps.json: file not found"):
        read_domain("p5", folder, "toy", min_user_interactions=0, max_history=0)
