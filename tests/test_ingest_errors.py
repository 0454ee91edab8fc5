"""Bad input: a located InputError (file, line, field) for broken structure; skipped and counted otherwise."""
import json
from pathlib import Path

import pytest

from recbase.cli import main
from recbase.data.ingest import read_domain
from recbase.data.readers import InputError

MOVIES = "movieId,title,genres\n1,Toy Story (1995),Animation\n2,Heat (1995),Action\n"
RATINGS = "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,2,4.0,964981247\n"


def _movielens(tmp_path: Path, movies: bytes | str = MOVIES, ratings: bytes | str = RATINGS) -> Path:
    for name, data in (("movies.csv", movies), ("ratings.csv", ratings)):
        (tmp_path / name).write_bytes(data if isinstance(data, bytes) else data.encode())
    return tmp_path


def _read(fmt, path):
    return read_domain(fmt, path, "d", min_user_interactions=0, max_history=0)


def _error(fmt, path) -> InputError:
    with pytest.raises(InputError) as info:
        _read(fmt, path)
    return info.value


def test_missing_column_names_file_and_field(tmp_path):
    e = _error("movielens", _movielens(tmp_path, movies="movieId,title\n1,Toy Story (1995)\n"))
    assert (e.path.name, e.line, e.field) == ("movies.csv", 1, "genres")
    assert str(e).startswith(f"{tmp_path / 'movies.csv'}, line 1, field 'genres': missing column")


def test_missing_column_in_ratings(tmp_path):
    e = _error("movielens", _movielens(tmp_path, ratings="userId,movieId,rating\n1,1,4.0\n"))
    assert (e.path.name, e.line, e.field) == ("ratings.csv", 1, "timestamp")


def test_malformed_csv_row_names_line(tmp_path):
    e = _error("movielens", _movielens(tmp_path, ratings=RATINGS + "1,3,4.0,964981247,extra\n"))
    assert (e.path.name, e.line) == ("ratings.csv", 4)
    assert "malformed row" in str(e)


def test_unparsable_value_names_line_and_field(tmp_path):
    e = _error("movielens", _movielens(tmp_path, ratings=RATINGS + "2,1,3.0,yesterday\n"))
    assert (e.line, e.field) == (4, "timestamp") and "'yesterday'" in str(e)


def test_empty_id_names_line_and_field(tmp_path):
    e = _error("movielens", _movielens(tmp_path, ratings=RATINGS + ",1,3.0,964981247\n"))
    assert (e.line, e.field) == (4, "userId")


def test_non_utf8_byte_names_line(tmp_path):
    e = _error("movielens", _movielens(tmp_path, movies=MOVIES.encode() + b"3,Caf\xe9 (2001),Drama\n"))
    assert (e.path.name, e.line) == ("movies.csv", 4) and "0xe9" in str(e)


def test_non_utf8_byte_in_json_lines(tmp_path):
    (tmp_path / "yelp_academic_dataset_business.json").write_bytes(
        b'{"business_id": "b", "name": "ok"}\n{"business_id": "c", "name": "\xff"}\n')
    (tmp_path / "yelp_academic_dataset_review.json").write_text("")
    e = _error("yelp", tmp_path)
    assert (e.path.name, e.line) == ("yelp_academic_dataset_business.json", 2)


@pytest.mark.parametrize("which", ["movies", "ratings"])
def test_empty_file(tmp_path, which):
    e = _error("movielens", _movielens(tmp_path, **{which: ""}))
    assert e.path.name == f"{which}.csv" and "file is empty" in str(e)


def test_empty_json_lines_file(tmp_path):
    (tmp_path / "yelp_academic_dataset_business.json").write_text('{"business_id": "b", "name": "x"}\n')
    (tmp_path / "yelp_academic_dataset_review.json").write_text("")
    e = _error("yelp", tmp_path)
    assert e.path.name == "yelp_academic_dataset_review.json" and "file is empty" in str(e)


def test_malformed_json_record_names_line(tmp_path):
    (tmp_path / "yelp_academic_dataset_business.json").write_text(
        '{"business_id": "b", "name": "x"}\n\n{"business_id": "c", "name": \n')
    (tmp_path / "yelp_academic_dataset_review.json").write_text("{}\n")
    e = _error("yelp", tmp_path)
    assert e.line == 3 and "malformed record" in str(e)


def test_missing_json_field_names_field(tmp_path):
    (tmp_path / "yelp_academic_dataset_business.json").write_text('{"business_id": "b", "name": "x"}\n')
    (tmp_path / "yelp_academic_dataset_review.json").write_text(
        json.dumps({"user_id": "u", "business_id": "b", "date": "2014-02-05 20:30:30"}) + "\n"
        + json.dumps({"user_id": "u", "business_id": "b"}) + "\n")
    e = _error("yelp", tmp_path)
    assert (e.line, e.field) == (2, "date") and "missing field" in str(e)


def test_bad_time_names_line_and_field(tmp_path):
    (tmp_path / "yelp_academic_dataset_business.json").write_text('{"business_id": "b", "name": "x"}\n')
    (tmp_path / "yelp_academic_dataset_review.json").write_text(
        json.dumps({"user_id": "u", "business_id": "b", "date": "05/02/2014"}) + "\n")
    e = _error("yelp", tmp_path)
    assert (e.line, e.field) == (1, "date") and "not a time" in str(e)


def test_malformed_mind_impression(tmp_path):
    (tmp_path / "news.tsv").write_text("N1\tsports\tfootball\tTitle\t\thttp://u\t[]\t[]\n")
    (tmp_path / "behaviors.tsv").write_text("1\tU1\t11/11/2019 9:05:58 AM\t\tN1-1\n"
                                            "2\tU1\t11/11/2019 9:06:58 AM\t\tN1-yes\n")
    e = _error("mind", tmp_path)
    assert (e.path.name, e.line, e.field) == ("behaviors.tsv", 2, "impressions")


def test_unknown_items_and_duplicates_are_skipped_and_counted(tmp_path):
    ratings = RATINGS + "1,2,4.0,964981247\n1,99,4.0,964981247\n"
    t = _read("movielens", _movielens(tmp_path, movies=MOVIES + "1,Toy Story again,Comedy\n4,,\n", ratings=ratings))
    assert t.summary.dropped == {"duplicate interaction rows": 1, "interaction whose item has no metadata": 1,
                                 "duplicate item rows": 1, "item rows with no text fields": 1}
    assert t.summary.interactions == 2 and t.summary.items == 2


def test_command_prints_the_error_and_fails(tmp_path, capsys):
    _movielens(tmp_path, ratings=RATINGS + "2,1,3.0,yesterday\n")
    assert main(["ingest", "movielens", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    assert "line 4, field 'timestamp'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_not_a_dataset_folder(tmp_path):
    e = _error("movielens", tmp_path)
    assert "not a MovieLens folder" in str(e)
    with pytest.raises(InputError, match="no MIND news file"):
        _read("mind", tmp_path)


def test_short_csv_row_names_line(tmp_path):
    e = _error("movielens", _movielens(tmp_path, ratings=RATINGS + "1,3,4.0\n"))
    assert (e.path.name, e.line, e.field) == ("ratings.csv", 4, "timestamp")


def test_long_first_row_names_line(tmp_path):
    e = _error("movielens", _movielens(tmp_path, movies="movieId,title,genres\n1,Toy Story (1995),Animation,x\n"))
    assert (e.path.name, e.line) == ("movies.csv", 2) and "malformed row" in str(e)


@pytest.mark.parametrize("value,message", [
    ("99999999999999999999", "out of the int64 range"),
    ("1700000000000", "outside the years 1..9999"),            # milliseconds read as seconds
    ("964982703.5", "not a whole number"),
    ("964982703.0", None),                                      # an integer written as a float is exact
])
def test_oversized_and_fractional_timestamps_are_located_errors(tmp_path, value, message):
    path = _movielens(tmp_path, ratings=RATINGS + f"2,1,3.0,{value}\n")
    if message is None:
        assert _read("movielens", path).interactions["timestamp"].to_pylist()[-1] == 964982703
        return
    e = _error("movielens", path)
    assert (e.path.name, e.line, e.field) == ("ratings.csv", 4, "timestamp") and message in str(e)


def test_time_formats_convert_exactly_or_refuse(tmp_path):
    """unix_ms is floored to the second (documented); a fraction of a second in a date string is refused."""
    import pandas as pd

    from recbase.data.readers.common import parse_time, time_column

    ms = pd.Series(["1700000000999", "-1"], name="t")
    assert time_column(ms, "unix_ms", tmp_path / "f.csv").tolist() == [1700000000, -1]
    assert parse_time("1700000000999", "unix_ms", tmp_path / "f.csv", 3, "t") == 1700000000
    iso = pd.Series(["2020-01-01T00:00:00Z", "2020-01-01T00:00:00.250Z"], name="t")
    with pytest.raises(InputError, match=r"line 3, field 't': '2020-01-01T00:00:00.250Z' has a fraction of a second"):
        time_column(iso, "iso", tmp_path / "f.csv")
    with pytest.raises(InputError, match=r"line 7, field 't': .* has a fraction of a second"):
        parse_time("2020-01-01T00:00:00.250Z", "iso", tmp_path / "f.csv", 7, "t")
    assert time_column(iso[:1], "iso", tmp_path / "f.csv").tolist() == [1577836800]
    with pytest.raises(InputError, match="line 2, field 't': out of the int64 range: '1e30'"):
        parse_time("1e30", "unix", tmp_path / "f.csv", 2, "t")


@pytest.mark.parametrize("name", ["../../x", "/abs", "a/b", "..", ".hidden"])
def test_domain_names_are_plain_names(tmp_path, capsys, name):
    out = tmp_path / "nested" / "out"
    path = _movielens(tmp_path)
    assert main(["ingest", "movielens", str(path), "--out", str(out), "--domain", name]) == 2
    assert f"domain name {name!r} is not a plain name" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not out.exists()


def test_tables_of_other_inputs_are_replaced_only_with_overwrite(tmp_path, capsys):
    out = tmp_path / "out"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, second = _movielens(tmp_path / "a"), _movielens(tmp_path / "b", ratings=RATINGS + "2,1,3.0,964982000\n")
    ingest = ["ingest", "movielens", "--out", str(out), "--domain", "ml", "--min-user-interactions", "0"]
    assert main([*ingest[:2], str(first), *ingest[2:]]) == 0
    before = (out / "ml" / "interactions.parquet").read_bytes()
    assert main([*ingest[:2], str(first), *ingest[2:]]) == 0            # the same ingest again: its own tables
    capsys.readouterr()
    assert main([*ingest[:2], str(second), *ingest[2:]]) == 2           # another dataset into the same domain
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{out / 'ml'}: holds tables ingested with another source" in err
    assert "--overwrite" in err and (out / "ml" / "interactions.parquet").read_bytes() == before
    assert main([*ingest[:2], str(first), *ingest[2:-1], "2"]) == 2    # the same dataset, another filter
    assert "min_user_interactions (0, now 2)" in capsys.readouterr().err
    assert main([*ingest[:2], str(second), *ingest[2:], "--overwrite"]) == 0
    assert (out / "ml" / "interactions.parquet").read_bytes() != before
    (out / "ml" / "ingest_summary.json").unlink()                       # tables no ingest recorded
    assert main([*ingest[:2], str(second), *ingest[2:]]) == 2
    assert "no readable ingest_summary.json" in capsys.readouterr().err
