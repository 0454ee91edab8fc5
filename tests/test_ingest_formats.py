"""Every reader on small files written here in the source's published layout."""
import gzip
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from recbase.cli import main
from recbase.data.ingest import ingest, read_domain
from recbase.data.readers import InputError
from recbase.data.readers.generic import load_spec


def _read(fmt, path, **options):
    return read_domain(fmt, path, "d", min_user_interactions=0, max_history=0, **options)


def _texts(tables):
    return dict(zip(tables.items.column("item_id").to_pylist(), tables.items.column("text").to_pylist()))


def _rows(tables):
    d = tables.interactions.to_pydict()
    return list(zip(d["user_id"], d["item_id"], d["timestamp"]))


def _write(path: Path, text: str, encoding="utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding))
    return path


def _jsonl(path: Path, records, literal=False) -> Path:
    lines = [repr(r) if literal else json.dumps(r) for r in records]
    data = ("\n".join(lines) + "\n").encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def test_movielens_1m_dat_latin1(tmp_path):
    _write(tmp_path / "movies.dat", "1::Toy Story (1995)::Animation|Children's|Comedy\n"
                                    "2::Am\u00e9lie (2001)::Comedy|Romance\n", encoding="latin-1")
    _write(tmp_path / "ratings.dat", "1::1::5::978300760\n1::2::3::978300700\n2::2::4::978300800\n")
    t = _read("movielens", tmp_path)
    assert _texts(t)["2"] == 'Describe a movie:\n{"title": "Am\u00e9lie (2001)", "genres": "Comedy | Romance"}'
    assert _rows(t) == [("1", "2", 978300700), ("1", "1", 978300760), ("2", "2", 978300800)]


def test_movielens_100k(tmp_path):
    genres = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
              "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War",
              "Western"]
    _write(tmp_path / "u.genre", "".join(f"{g}|{i}\n" for i, g in enumerate(genres)) + "\n")
    flags = ["0"] * 19
    flags[3] = flags[4] = flags[5] = "1"
    _write(tmp_path / "u.item", "1|Toy Story (1995)|01-Jan-1995||http://us.imdb.com/M/title-exact?Toy%20Story%20(1995)|"
           + "|".join(flags) + "\n2|GoldenEye (1995)|01-Jan-1995||http://x|" + "|".join(["0", "1"] + ["0"] * 17)
           + "\n", encoding="latin-1")
    _write(tmp_path / "u.data", "196\t1\t3\t881250949\n186\t2\t3\t891717742\n")
    t = _read("movielens", tmp_path)
    assert _texts(t)["1"] == 'Describe a movie:\n{"title": "Toy Story (1995)", "genres": "Animation | Children\'s | Comedy"}'
    assert _texts(t)["2"] == 'Describe a movie:\n{"title": "GoldenEye (1995)", "genres": "Action"}'
    assert t.summary.interactions == 2


def test_amazon_2014_python_literal_meta(tmp_path):
    _jsonl(tmp_path / "reviews_Tools_5.json.gz", [
        {"reviewerID": "U1", "asin": "A1", "overall": 5.0, "unixReviewTime": 1300000000, "reviewTime": "x"},
        {"reviewerID": "U1", "asin": "A2", "overall": 4.0, "unixReviewTime": 1200000000}])
    _jsonl(tmp_path / "meta_Tools.json.gz", [
        {"asin": "A1", "title": "Hammer", "price": 9.5, "categories": [["Tools", "Hand Tools"], ["Tools"]],
         "brand": "Acme", "description": "A hammer.", "salesRank": {"Tools": 3}},
        {"asin": "A2", "title": "Saw", "categories": [["Tools"]]}], literal=True)
    t = _read("amazon", tmp_path)
    assert _texts(t)["A1"] == ('Describe a product:\n{"title": "Hammer", "brand": "Acme", '
                               '"categories": "Tools | Hand Tools", "price": "$9.50", "description": "A hammer."}')
    assert _rows(t) == [("U1", "A2", 1200000000), ("U1", "A1", 1300000000)]


def test_amazon_2018_json_meta(tmp_path):
    _jsonl(tmp_path / "Tools_5.json", [{"reviewerID": "U1", "asin": "B1", "unixReviewTime": 1500000000}])
    _jsonl(tmp_path / "meta_Tools.json", [
        {"asin": "B1", "title": "Drill", "brand": "Bosch", "category": ["Tools", "Power Tools"],
         "feature": ["18V", "2 batteries"], "description": ["Cordless drill."], "price": ".a-box{display:none}"}])
    t = _read("amazon", tmp_path)
    assert _texts(t)["B1"] == ('Describe a product:\n{"title": "Drill", "brand": "Bosch", '
                               '"categories": "Tools | Power Tools", "features": "18V | 2 batteries", '
                               '"description": "Cordless drill."}')


def test_amazon_2023(tmp_path):
    _jsonl(tmp_path / "All_Beauty.jsonl", [
        {"rating": 5.0, "asin": "C1v", "parent_asin": "C1", "user_id": "U9", "timestamp": 1588687728923}])
    _jsonl(tmp_path / "meta_All_Beauty.jsonl", [
        {"main_category": "All Beauty", "title": "Soap", "store": "Dove", "categories": [], "price": None,
         "features": [], "description": [], "details": {"Size": "1"}, "parent_asin": "C1"}])
    t = _read("amazon2023", tmp_path)
    assert _texts(t)["C1"] == 'Describe a product:\n{"title": "Soap", "brand": "Dove", "categories": "All Beauty"}'
    assert _rows(t) == [("U9", "C1", 1588687728)]


def test_steam(tmp_path):
    _jsonl(tmp_path / "steam_games.json", [
        {"publisher": "Valve", "genres": ["Action"], "app_name": "Half-Life", "title": "Half-Life",
         "tags": ["FPS", "Classic"], "specs": ["Single-player"], "id": "70", "developer": "Valve"},
        {"app_name": "No id game"}], literal=True)
    _jsonl(tmp_path / "steam_reviews.json", [
        {"username": "bob", "hours": 3.0, "product_id": "70", "date": "2017-12-17", "text": "fun"}], literal=True)
    t = _read("steam", tmp_path)
    assert _texts(t)["70"] == ('Describe a game:\n{"title": "Half-Life", "genres": "Action", "tags": "FPS | Classic", '
                               '"specs": "Single-player", "developer": "Valve", "publisher": "Valve"}')
    assert _rows(t) == [("bob", "70", 1513468800)]
    assert t.summary.dropped == {"item rows without id": 1}


def test_goodreads_with_author_names(tmp_path):
    _jsonl(tmp_path / "goodreads_books_poetry.json", [
        {"book_id": "5", "title": "Odes", "authors": [{"author_id": "9", "role": ""}], "publisher": "P",
         "publication_year": "1999", "description": ""}])
    _jsonl(tmp_path / "goodreads_book_authors.json", [{"author_id": "9", "name": "Keats"}])
    _jsonl(tmp_path / "goodreads_interactions_poetry.json", [
        {"user_id": "u", "book_id": "5", "is_read": True, "rating": 5,
         "date_added": "Tue Oct 17 09:39:58 -0700 2017"}])
    t = _read("goodreads", tmp_path)
    assert _texts(t)["5"] == ('Describe a book:\n{"title": "Odes", "authors": "Keats", "publisher": "P", '
                              '"publication_year": "1999"}')
    assert _rows(t) == [("u", "5", 1508258398)]   # 16:39:58 UTC


def test_mind_clicks_history_and_impressions(tmp_path):
    _write(tmp_path / "news.tsv",
           "N1\tsports\tfootball\tTeam wins\tA close game.\thttp://u\t[]\t[]\n"
           "N2\tnews\tworld\tElection\t\thttp://u\t[]\t[]\n"
           "N3\tfood\trecipes\tSoup\t\thttp://u\t[]\t[]\n")
    _write(tmp_path / "behaviors.tsv",
           "1\tU1\t11/11/2019 9:05:58 AM\tN3 N2\tN1-1 N2-0\n"
           "2\tU1\t11/12/2019 1:00:00 PM\tN3 N2\tN3-0 N2-1\n")
    t = _read("mind", tmp_path)
    assert _texts(t)["N1"] == ('Describe a news article:\n{"title": "Team wins", "category": "sports", '
                               '"subcategory": "football", "abstract": "A close game."}')
    first = 1573463158   # 2019-11-11 09:05:58 UTC
    assert _rows(t) == [("U1", "N3", first - 2), ("U1", "N2", first - 1), ("U1", "N1", first),
                        ("U1", "N2", first + 100442)]
    imp = t.extra["impressions"].to_pydict()
    assert list(zip(imp["impression_id"], imp["item_id"], imp["label"])) == [
        ("1", "N1", 1), ("1", "N2", 0), ("2", "N3", 0), ("2", "N2", 1)]
    out = tmp_path / "out"
    ingest("mind", tmp_path, out, domain="mind", min_user_interactions=0)
    assert pq.read_table(out / "mind" / "impressions.parquet").column_names == [
        "domain", "user_id", "impression_id", "item_id", "label", "timestamp"]


def test_yelp(tmp_path):
    _jsonl(tmp_path / "yelp_academic_dataset_business.json", [
        {"business_id": "b1", "name": "Cafe", "city": "Tucson", "state": "AZ", "stars": 4.0,
         "categories": "Coffee & Tea, Food", "attributes": {"WiFi": "free"}}])
    _jsonl(tmp_path / "yelp_academic_dataset_review.json", [
        {"review_id": "r", "user_id": "u", "business_id": "b1", "stars": 5, "date": "2014-02-05 20:30:30"}])
    t = _read("yelp", tmp_path)
    assert _texts(t)["b1"] == ('Describe a business:\n{"name": "Cafe", "categories": "Coffee & Tea | Food", '
                               '"city": "Tucson", "state": "AZ"}')
    assert _rows(t) == [("u", "b1", 1391632230)]


def test_hm(tmp_path):
    cols = ("article_id,product_code,prod_name,product_type_no,product_type_name,product_group_name,"
            "graphical_appearance_no,graphical_appearance_name,colour_group_code,colour_group_name,"
            "perceived_colour_value_id,perceived_colour_value_name,perceived_colour_master_id,"
            "perceived_colour_master_name,department_no,department_name,index_code,index_name,index_group_no,"
            "index_group_name,section_no,section_name,garment_group_no,garment_group_name,detail_desc")
    _write(tmp_path / "articles.csv", cols + "\n0108775015,0108775,Strap top,253,Vest top,Garment Upper body,"
           "1010016,Solid,09,Black,4,Dark,5,Black,1676,Jersey Basic,A,Ladieswear,1,Ladieswear,16,"
           "Womens Everyday Basics,1002,Jersey Basic,\"Jersey top with narrow shoulder straps.\"\n")
    _write(tmp_path / "transactions_train.csv", "t_dat,customer_id,article_id,price,sales_channel_id\n"
           "2018-09-20,000058a1,0108775015,0.05,2\n2018-09-20,000058a1,0108775015,0.05,2\n")
    t = _read("hm", tmp_path)
    assert _texts(t)["0108775015"] == (
        'Describe a fashion article:\n{"name": "Strap top", "product_type": "Vest top", '
        '"product_group": "Garment Upper body", "colour": "Black", "appearance": "Solid", '
        '"section": "Womens Everyday Basics", "garment_group": "Jersey Basic", '
        '"description": "Jersey top with narrow shoulder straps."}')
    assert _rows(t) == [("000058a1", "0108775015", 1537401600)]
    assert t.summary.dropped == {"duplicate interaction rows": 1}


def test_recbole_plain_inter(tmp_path):
    _write(tmp_path / "ml.item", "item_id:token\ttitle:token_seq\n10\tHeat\n11\tAlien\n")
    _write(tmp_path / "ml.inter", "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
                                  "1\t11\t4\t900.0\n1\t10\t3\t800.0\n")
    t = _read("recbole", tmp_path, kind="movie")
    assert _texts(t)["10"] == 'Describe a movie:\n{"title": "Heat"}'
    assert _rows(t) == [("1", "10", 800), ("1", "11", 900)]


@pytest.mark.parametrize("suffix", ["csv", "tsv", "jsonl", "parquet"])
def test_generic_formats_from_command_line(tmp_path, suffix):
    import pandas as pd

    items = pd.DataFrame({"sku": ["s1", "s2"], "name": ["Mug", "Cup"], "tags": ["kitchen", ""]})
    events = pd.DataFrame({"who": ["a", "a", "b"], "sku": ["s2", "s1", "s1"],
                           "when": ["2020-01-02T00:00:00", "2020-01-01T00:00:00", "2020-01-03T00:00:00"]})
    for name, df in (("items", items), ("events", events)):
        path = tmp_path / f"{name}.{suffix}"
        if suffix == "parquet":
            df.to_parquet(path)
        elif suffix == "jsonl":
            df.to_json(path, orient="records", lines=True)
        else:
            df.to_csv(path, sep="\t" if suffix == "tsv" else ",", index=False)
    code = main(["ingest", "generic", str(tmp_path), "--out", str(tmp_path / "out"), "--domain", "shop",
                 "--min-user-interactions", "0", "--set", f"items=items.{suffix}", f"interactions=events.{suffix}",
                 "item_id=sku", "user_id=who", "time=when", "time_format=iso", "text_fields=name,tags",
                 "kind=product"])
    assert code == 0
    got = pq.read_table(tmp_path / "out" / "shop" / "items.parquet").to_pydict()
    assert got["text"] == ['Describe a product:\n{"name": "Mug", "tags": "kitchen"}',
                           'Describe a product:\n{"name": "Cup"}']
    inter = pq.read_table(tmp_path / "out" / "shop" / "interactions.parquet").to_pydict()
    assert inter["item_id"] == ["s1", "s2", "s1"] and inter["timestamp"][0] == 1577836800


def test_generic_spec_file(tmp_path):
    _write(tmp_path / "items.csv", "id,title\n1,Dune\n")
    _write(tmp_path / "log.csv", "user,id\nx,1\nx,1\n")
    spec = _write(tmp_path / "spec.json", json.dumps({"items": "items.csv", "interactions": "log.csv",
                                                      "item_id": "id", "user_id": "user", "text_fields": ["title"],
                                                      "kind": "book"}))
    t = _read("generic", spec, spec=load_spec(spec))
    assert _texts(t)["1"] == 'Describe a book:\n{"title": "Dune"}'
    assert _rows(t) == [("x", "1", 0), ("x", "1", 1)]   # no time column: row order


def test_generic_parquet_typed_columns(tmp_path):
    import pyarrow as pa

    pq.write_table(pa.table({"id": [7, 8], "title": ["Dune", None], "year": [1965, None],
                             "genres": [["sci-fi", "classic"], []]}), tmp_path / "items.parquet")
    pq.write_table(pa.table({"user": ["x"], "id": [7], "t": [1_600_000_000_000]}), tmp_path / "log.parquet")
    spec = load_spec(tmp_path, overrides=["items=items.parquet", "interactions=log.parquet", "item_id=id",
                                          "user_id=user", "time=t", "time_format=unix_ms",
                                          'text_fields=["title","year","genres"]', "kind=book"])
    t = _read("generic", tmp_path, spec=spec)
    # Book fields in the template's order (title, genres), unknown "year" after; 1965.0 (a float column, because
    # of the null) renders as 1965; item 8 has no non-empty field and is skipped and counted.
    assert _texts(t) == {"7": 'Describe a book:\n{"title": "Dune", "genres": "sci-fi | classic", "year": "1965"}'}
    assert t.summary.dropped == {"item rows with no text fields": 1}
    assert _rows(t) == [("x", "7", 1_600_000_000)]


def _generic_files(tmp_path, items: str, log: str):
    _write(tmp_path / "items.csv", items)
    _write(tmp_path / "log.csv", log)
    return ["items=items.csv", "interactions=log.csv", "item_id=id", "user_id=user"]


def test_generic_skips_and_counts_bad_rows(tmp_path):
    base = _generic_files(tmp_path, "id,app_name\n1,Portal\n,Nameless\n2,Braid\n",
                          "user,id,t\nx,1,100\n,2,101\nx,2,soon\ny,,102\ny,2,103\n")
    spec = ["time=t", "text_fields=app_name", "kind=app"]
    with pytest.raises(InputError, match=r"items.csv, line 3, field 'id': empty id"):
        _read("generic", tmp_path, spec=load_spec(tmp_path, overrides=base + spec))
    t = _read("generic", tmp_path, spec=load_spec(tmp_path, overrides=base + spec + ["bad_rows=skip"]))
    assert t.summary.dropped == {"item rows with an empty id (items.csv)": 1,
                                 "interaction rows with an empty user (log.csv)": 1,
                                 "interaction rows with an empty id (log.csv)": 1,
                                 "interaction rows whose t is not a time (log.csv)": 1}
    assert _rows(t) == [("x", "1", 100), ("y", "2", 103)]
    assert _texts(t) == {"1": 'Describe an app:\n{"app_name": "Portal"}', "2": 'Describe an app:\n{"app_name": "Braid"}'}


def test_generic_field_map_and_name_count_lists(tmp_path):
    _jsonl(tmp_path / "items.jsonl", [{"id": "g1", "app_name": "Portal", "dev": "Valve",
                                       "tags": [["Puzzle", 120], ["Co-op", 40]]}])
    _write(tmp_path / "log.csv", "user,id\nx,g1\n")
    spec = load_spec(tmp_path, overrides=["items=items.jsonl", "interactions=log.csv", "item_id=id", "user_id=user",
                                          "text_fields=tags,dev,app_name", "kind=app",
                                          'field_map={"app_name": "title", "dev": "developer"}'])
    t = _read("generic", tmp_path, spec=spec)
    # Template order (title, developer, genres, tags), whatever the source's; the tag counts are left out.
    assert _texts(t)["g1"] == 'Describe an app:\n{"title": "Portal", "developer": "Valve", "tags": "Puzzle | Co-op"}'
    assert t.items.column("title").to_pylist() == ["Portal"]
    bad = load_spec(tmp_path, overrides=["items=items.jsonl", "interactions=log.csv", "item_id=id", "user_id=user",
                                         "text_fields=app_name", 'field_map={"name": "title"}'])
    with pytest.raises(InputError, match="field 'field_map': field_map names name, which are not in text_fields"):
        _read("generic", tmp_path, spec=bad)


@pytest.mark.parametrize("kind, prompt", [("music", "Describe a music track"), ("fashion", "Describe a fashion product"),
                                          ("video", "Describe a video"), ("recipe", "Describe a recipe"),
                                          ("poi", "Describe a place")])
def test_generic_more_kinds(tmp_path, kind, prompt):
    base = _generic_files(tmp_path, "id,title,name\n1,A,B\n", "user,id\nx,1\n")
    t = _read("generic", tmp_path, spec=load_spec(tmp_path, overrides=base + ["text_fields=title", f"kind={kind}"]))
    assert _texts(t)["1"] == prompt + ':\n{"title": "A"}'


def test_generic_unknown_kind_is_one_clear_line(tmp_path, capsys):
    base = _generic_files(tmp_path, "id,title\n1,A\n", "user,id\nx,1\n")
    code = main(["ingest", "generic", str(tmp_path), "--out", str(tmp_path / "out"), "--set", *base,
                 "text_fields=title", "kind=podcast"])
    out = capsys.readouterr().err.strip()
    assert code == 2 and len(out.splitlines()) == 1
    assert out.startswith(f"error: {tmp_path}, field 'kind': unknown template kind 'podcast'; known: movie, product")
    assert not (tmp_path / "out").exists()


def test_interacted_items_only_restricts_the_catalog(tmp_path):
    base = _generic_files(tmp_path, "id,title\n1,A\n2,B\n3,C\n", "user,id\nx,1\nx,3\ny,2\n")
    spec = load_spec(tmp_path, overrides=base + ["text_fields=title"])
    # y (one interaction) falls under the 2-interaction filter, and with y goes the only use of item 2.
    t = read_domain("generic", tmp_path, "d", min_user_interactions=2, max_history=0, spec=spec,
                    interacted_items_only=True)
    assert sorted(t.items.column("item_id").to_pylist()) == ["1", "3"]
    assert t.summary.dropped["items no kept interaction uses"] == 1
    full = read_domain("generic", tmp_path, "d", min_user_interactions=2, max_history=0, spec=spec)
    assert full.items.num_rows == 3


def test_ingest_takes_a_preset_name(tmp_path, capsys):
    _write(tmp_path / "items.csv", "item_id,title\n100,best lemonade\n101,chicken breasts lombardi\n")
    _write(tmp_path / "interactions.csv", "user_id,item_id,timestamp\n100,101,1020643200\n100,100,1020297600\n")
    assert main(["ingest", "food-com-recipes", str(tmp_path), "--out", str(tmp_path / "out"),
                 "--min-user-interactions", "0"]) == 0
    items = pq.read_table(tmp_path / "out" / "recipes" / "items.parquet").to_pydict()
    assert items["text"][0] == 'Describe a recipe:\n{"title": "best lemonade"}'
    inter = pq.read_table(tmp_path / "out" / "recipes" / "interactions.parquet").to_pydict()
    assert inter["item_id"] == ["100", "101"]
