"""Every reader fed malformed rows of every kind: the outcome is a located user error or a counted skip, never a
traceback and never a value the source does not say.

Each case starts from a small valid dataset in a source's published layout, damages one line of one file in a
seeded way (truncated, a wrong type, a huge number, a byte that is not UTF-8, a duplicated row, a cut file) and
reads it. Accepted results are checked against what the damaged text says: every timestamp is a whole second
inside the years 1..9999, every interaction's item has metadata, ids are the text between the separators.
"""
from __future__ import annotations

import json
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recbase.data.ingest import read_domain
from recbase.data.readers.common import SECONDS_RANGE
from recbase.data.readers.generic import GenericSpec
from recbase.errors import UserError

# format -> {file name: valid text}
DATASETS = {
    "movielens": {"movies.csv": "movieId,title,genres\n1,Toy Story (1995),Animation\n2,Heat (1995),Action\n"
                                "3,Up (2009),Animation\n",
                  "ratings.csv": "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,2,4.0,964981247\n"
                                 "2,3,5.0,964982224\n2,1,3.0,964983815\n"},
    "amazon2023": {"meta_All_Beauty.jsonl": "".join(json.dumps(
                       {"main_category": "All Beauty", "title": t, "store": "Dove", "parent_asin": a}) + "\n"
                       for a, t in (("C1", "Soap"), ("C2", "Shampoo"), ("C3", "Lotion"))),
                   "All_Beauty.jsonl": "".join(json.dumps(
                       {"rating": 5.0, "asin": a + "v", "parent_asin": a, "user_id": u, "timestamp": ts}) + "\n"
                       for u, a, ts in (("U1", "C1", 1588687728923), ("U1", "C2", 1588687729923),
                                        ("U2", "C3", 1588687730923), ("U2", "C1", 1588687731923)))},
    "mind": {"news.tsv": "N1\tsports\tfootball\tTeam wins\tA close game.\thttp://u\t[]\t[]\n"
                         "N2\tnews\tworld\tElection\t\thttp://u\t[]\t[]\n"
                         "N3\tfood\trecipes\tSoup\t\thttp://u\t[]\t[]\n",
             "behaviors.tsv": "1\tU1\t11/11/2019 9:05:58 AM\tN3 N2\tN1-1 N2-0\n"
                              "2\tU1\t11/12/2019 1:00:00 PM\tN3 N2\tN3-0 N2-1\n"
                              "3\tU2\t11/13/2019 2:00:00 PM\tN1\tN2-1 N3-0\n"},
    "recbole": {"d.item": "item_id:token\ttitle:token_seq\nI1\tred shoe\nI2\tblue hat\nI3\tgreen scarf\n",
                "d.inter": "user_id:token\titem_id:token\ttimestamp:float\nU1\tI1\t1500000000.0\n"
                           "U1\tI2\t1500000100.0\nU2\tI3\t1500000200.0\nU2\tI1\t1500000300.0\n"},
    "hm": {"articles.csv": "article_id,prod_name,product_type_name,product_group_name,graphical_appearance_name,"
                           "colour_group_name,section_name,garment_group_name,detail_desc\n"
                           "0108775015,Strap top,Vest top,Upper body,Solid,Black,Basics,Jersey,Jersey top.\n"
                           "0108775044,Strap top,Vest top,Upper body,Solid,White,Basics,Jersey,Jersey top.\n"
                           "0110065001,OP T-shirt,Bra,Underwear,Solid,Black,Lingerie,Under,T-shirt bra.\n",
           "transactions_train.csv": "t_dat,customer_id,article_id,price,sales_channel_id\n"
                                     "2018-09-20,c1,0108775015,0.05,2\n2018-09-21,c1,0110065001,0.03,2\n"
                                     "2018-09-22,c2,0108775044,0.02,1\n2018-09-23,c2,0108775015,0.05,2\n"},
    "yelp": {"yelp_academic_dataset_business.json": "".join(json.dumps(
                 {"business_id": b, "name": n, "city": "Tucson", "state": "AZ", "categories": "Food"}) + "\n"
                 for b, n in (("b1", "Cafe"), ("b2", "Diner"), ("b3", "Bakery"))),
             "yelp_academic_dataset_review.json": "".join(json.dumps(
                 {"review_id": r, "user_id": u, "business_id": b, "stars": 5, "date": d}) + "\n"
                 for r, u, b, d in (("r1", "u1", "b1", "2014-02-05 20:30:30"),
                                    ("r2", "u1", "b2", "2014-02-06 10:00:00"),
                                    ("r3", "u2", "b3", "2015-01-01 00:00:00"),
                                    ("r4", "u2", "b1", "2015-01-02 00:00:00")))},
    "goodreads": {"goodreads_books_poetry.json": "".join(json.dumps(
                      {"book_id": b, "title": n, "authors": [{"author_id": "9", "role": ""}], "publisher": "P"}) + "\n"
                      for b, n in (("5", "Odes"), ("6", "Sonnets"), ("7", "Elegies"))),
                  "goodreads_book_authors.json": json.dumps({"author_id": "9", "name": "Keats"}) + "\n",
                  "goodreads_interactions_poetry.json": "".join(json.dumps(
                      {"user_id": u, "book_id": b, "is_read": True, "rating": 5, "date_added": d}) + "\n"
                      for u, b, d in (("u", "5", "Tue Oct 17 09:39:58 -0700 2017"),
                                      ("u", "6", "Wed Oct 18 09:39:58 -0700 2017"),
                                      ("v", "7", "Thu Oct 19 09:39:58 -0700 2017")))},
    "steam": {"steam_games.json": "".join(repr(
                  {"app_name": n, "title": n, "genres": ["Action"], "id": i, "developer": "Valve"}) + "\n"
                  for i, n in (("70", "Half-Life"), ("220", "Half-Life 2"), ("400", "Portal"))),
              "steam_reviews.json": "".join(repr(
                  {"username": u, "hours": 3.0, "product_id": i, "date": d, "text": "fun"}) + "\n"
                  for u, i, d in (("bob", "70", "2017-12-17"), ("bob", "220", "2017-12-18"),
                                  ("amy", "400", "2018-01-02"), ("amy", "70", "2018-01-03")))},
    "amazon": {"meta_Tools.json": "".join(json.dumps(
                   {"asin": a, "title": n, "brand": "Bosch", "category": ["Tools"]}) + "\n"
                   for a, n in (("B1", "Drill"), ("B2", "Saw"), ("B3", "Hammer"))),
               "Tools_5.json": "".join(json.dumps(
                   {"reviewerID": u, "asin": a, "overall": 5.0, "unixReviewTime": ts}) + "\n"
                   for u, a, ts in (("U1", "B1", 1500000000), ("U1", "B2", 1500000100), ("U2", "B3", 1500000200),
                                    ("U2", "B1", 1500000300)))},
    "generic": {"items.csv": "sku,name,tags\ns1,Mug,kitchen\ns2,Cup,\ns3,Bowl,kitchen\n",
                "events.csv": "who,sku,when\na,s2,2020-01-02T00:00:00\na,s1,2020-01-01T00:00:00\n"
                              "b,s3,2020-01-03T00:00:00\nb,s1,2020-01-04T00:00:00\n"},
}
# options a reader needs beside the folder
OPTIONS = {"generic": lambda: {"spec": GenericSpec(items="items.csv", interactions="events.csv", item_id="sku",
                                                   user_id="who", time="when", time_format="iso",
                                                   text_fields="name,tags", kind="product")}}


def _read(fmt: str, folder):
    options = OPTIONS[fmt]() if fmt in OPTIONS else {}
    return read_domain(fmt, folder, "d", min_user_interactions=0, max_history=0, **options)


def _mutate(data: bytes, kind: str, rng: random.Random) -> bytes:
    """``data`` with one line (never the header) damaged as ``kind`` says."""
    lines = data.split(b"\n")
    body = [i for i, line in enumerate(lines) if line][1:] or [0]
    i = rng.choice(body)
    line = lines[i]
    if kind == "truncated":
        lines[i] = line[:rng.randrange(1, max(2, len(line)))]
    elif kind == "wrong type":
        digits = [j for j, c in enumerate(line) if chr(c).isdigit()]
        j = rng.choice(digits) if digits else 0
        lines[i] = line[:j] + b"x[]" + line[j + 1:]
    elif kind == "huge":
        digits = [j for j, c in enumerate(line) if chr(c).isdigit()]
        j = rng.choice(digits) if digits else 0
        lines[i] = line[:j] + b"9" * 40 + line[j:]
    elif kind == "non-utf8":
        j = rng.randrange(len(line) + 1)
        lines[i] = line[:j] + b"\xff\xfe" + line[j:]
    elif kind == "duplicate":
        lines.insert(i, line)
    elif kind == "cut file":
        return data[:rng.randrange(len(data))]
    return b"\n".join(lines)


KINDS = ("truncated", "wrong type", "huge", "non-utf8", "duplicate", "cut file")
SEEDS = range(3)


def _check_accepted(tables) -> None:
    """What an accepted read must satisfy whatever the damage was."""
    inter = tables.interactions.to_pydict()
    assert all(SECONDS_RANGE[0] <= t <= SECONDS_RANGE[1] for t in inter["timestamp"])
    items = set(tables.items.column("item_id").to_pylist())
    assert set(inter["item_id"]) <= items
    assert all(u and i for u, i in zip(inter["user_id"], inter["item_id"]))
    assert len(items) == tables.items.num_rows     # duplicates are dropped (and counted), never kept twice


@pytest.mark.parametrize("fmt", sorted(DATASETS))
@pytest.mark.parametrize("kind", KINDS)
def test_damaged_rows_give_a_user_error_or_a_counted_skip(tmp_path, fmt, kind):
    files = DATASETS[fmt]
    for seed in SEEDS:
        for target in sorted(files):
            folder = tmp_path / f"{seed}-{target}"
            folder.mkdir()
            rng = random.Random(f"{fmt}/{kind}/{target}/{seed}")
            for name, text in files.items():
                data = text.encode("utf-8")
                (folder / name).write_bytes(_mutate(data, kind, rng) if name == target else data)
            try:
                tables = _read(fmt, folder)
            except UserError as e:
                assert str(folder) in str(e) or "domain" in str(e), f"error names no file: {e}"
                continue
            _check_accepted(tables)


def test_valid_datasets_read_cleanly(tmp_path):
    """The baselines of the damage cases: every undamaged dataset reads with nothing skipped."""
    for fmt, files in DATASETS.items():
        folder = tmp_path / fmt
        folder.mkdir()
        for name, text in files.items():
            (folder / name).write_text(text)
        tables = _read(fmt, folder)
        assert tables.interactions.num_rows >= 3 and tables.items.num_rows == 3, fmt
        _check_accepted(tables)


@pytest.mark.parametrize("kind", KINDS)
def test_damaged_hand_off_files_give_a_user_error(tmp_path, kind):
    """The Parquet and JSON files the stages hand over, damaged the same ways, are refused with a user error."""
    from recbase.data.codes import read_codes, read_tokenizer_hash
    from recbase.data.evalsets import eval_set_tokenizer_hash, read_eval_set, schema
    from recbase.data.shard_format import FORMAT, read_manifest
    from recbase.data.tables import make_interactions_table, make_items_table, read_items, user_histories
    from recbase.eval.report import read_metrics
    from recbase.vocab import Vocab

    table = pa.table({"domain": ["d", "d"], "item_id": ["a", "b"], "codes": [[1, 2], [3, 4]]})
    codes = tmp_path / "codes.parquet"
    pq.write_table(table.replace_schema_metadata({"tokenizer_hash": "t", "codebook_size": "8"}), codes)
    manifest = tmp_path / "shards" / "manifest.json"
    manifest.parent.mkdir()
    manifest.write_text(json.dumps({"format": FORMAT, "tokenizer_hash": "t"}, indent=1))
    domain = tmp_path / "data" / "d"
    domain.mkdir(parents=True)
    pq.write_table(make_items_table("d", ["a", "b"], ["Describe: a", "Describe: b"]), domain / "items.parquet")
    pq.write_table(make_interactions_table("d", ["u", "u"], ["a", "b"], [1, 2]), domain / "interactions.parquet")
    vocab = Vocab(levels=2, codebook_size=8)
    eval_set = tmp_path / "eval" / "d.parquet"
    eval_set.parent.mkdir()
    row = {"user_id": ["u"], "history": [[vocab.bos_id, 8, 17]], "candidates": [["a", "b"]],
           "candidate_tokens": [[[8, 17], [9, 18]]], "labels": [[1, 0]], "target": ["a"]}
    pq.write_table(pa.table(row, schema=schema()).replace_schema_metadata({"tokenizer_hash": "t"}), eval_set)
    metrics = tmp_path / "out" / "metrics.json"
    metrics.parent.mkdir()
    metrics.write_text(json.dumps({"domains": {"d": {"models": {}}}}, indent=1))
    rng = random.Random(kind)
    for path, read in ((codes, lambda: read_codes(codes)), (codes, lambda: read_tokenizer_hash(codes)),
                       (manifest, lambda: read_manifest(manifest.parent)),
                       (domain / "items.parquet", lambda: read_items(domain)),
                       (domain / "interactions.parquet", lambda: user_histories(domain)),
                       (eval_set, lambda: read_eval_set(eval_set, vocab)),
                       (eval_set, lambda: eval_set_tokenizer_hash(eval_set)),
                       (metrics, lambda: read_metrics(metrics.parent))):
        path.write_bytes(_mutate(path.read_bytes(), kind, rng))
        try:
            read()
        except UserError as e:
            assert path.name in str(e), e
