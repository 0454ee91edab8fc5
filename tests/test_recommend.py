"""Recommender: a trained model on a catalog it has never seen; what it returns, how it caches, how it refuses."""
import json
import logging
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from eval_helpers import one_torch_thread  # noqa: F401  (autouse fixture)
from recbase.eval.model_io import TokenizerMismatch
from recbase.eval.scoring import candidate_token_logprobs_naive
from recbase.recommend import Recommender, UnknownItems, read_catalog_table


@pytest.fixture(scope="module")
def rec(recommend_world):
    return Recommender.from_pretrained(recommend_world["model"], recommend_world["tokenizer"],
                                       cache_dir=recommend_world["root"] / "cache")


@pytest.fixture(scope="module")
def catalog(rec, recommend_world):
    return rec.load_catalog(recommend_world["catalog"], progress=False)


def test_unseen_catalog_is_encoded_with_its_own_statistics(rec, catalog, recommend_world):
    assert catalog.domain == "news" and catalog.item_ids == recommend_world["ids"]
    assert np.array_equal(rec.model.vocab.decode_tokens(catalog.tokens), recommend_world["codes"])


def test_recommend_returns_the_learned_next_item_first(rec, catalog, recommend_world):
    cycle = recommend_world["cycle"]
    for j in range(len(cycle) - 1):
        found = rec.recommend(cycle[:j + 1], k=5, catalog=catalog)
        assert found[0].item_id == cycle[j + 1], (j, [r.item_id for r in found])
        assert len(found) == 5 and not set(cycle[:j + 1]) & {r.item_id for r in found}
        scores = [r.score for r in found]
        assert scores == sorted(scores, reverse=True)
        assert all(r.text == catalog.texts[catalog.row[r.item_id]] for r in found)


def test_recommend_scores_are_the_items_log_probabilities(rec, catalog, recommend_world):
    history = recommend_world["cycle"][:3]
    found = rec.recommend(history, k=8, catalog=catalog)
    ranked = {r.item_id: r.score for r in rec.score(history, [r.item_id for r in found], catalog=catalog)}
    for r in found:
        assert r.score == pytest.approx(ranked[r.item_id], abs=1e-4)


def test_score_matches_one_forward_per_candidate(rec, catalog, recommend_world):
    history, candidates = recommend_world["cycle"][:2], recommend_world["ids"][20:32]
    ranked = rec.score(history, candidates, catalog=catalog)
    assert sorted(r.item_id for r in ranked) == sorted(candidates)
    naive = candidate_token_logprobs_naive(rec.model.model, torch.as_tensor(rec.history_tokens(history, catalog)),
                                           torch.as_tensor(catalog.tokens[catalog.rows_of(candidates, "c")]))
    expected = dict(zip(candidates, naive.sum(1).tolist()))
    for r in ranked:
        assert r.score == pytest.approx(expected[r.item_id], abs=1e-4)
    assert [r.score for r in ranked] == sorted((r.score for r in ranked), reverse=True)


def test_history_items_can_be_included(rec, catalog, recommend_world):
    ids = [r.item_id for r in rec.recommend(recommend_world["cycle"][:1], k=60, exclude_history=False, catalog=catalog)]
    assert recommend_world["cycle"][0] in ids and len(ids) == len(set(ids))


def test_unknown_items_are_named(rec, catalog):
    with pytest.raises(UnknownItems, match=r"history: 1 item id\(s\) not in catalog 'news': 'nope'"):
        rec.recommend(["nope"], catalog=catalog)
    with pytest.raises(UnknownItems, match="candidates: .*'x1', 'x2'"):
        rec.score([], ["x1", "x2"], catalog=catalog)


def test_second_load_comes_from_the_cache(rec, recommend_world, monkeypatch, caplog):
    def no_embedding(texts):
        raise AssertionError("embedded again")

    monkeypatch.setattr(rec._get_embedder(), "encode", no_embedding)
    again = rec.load_catalog(recommend_world["catalog"], progress=False)
    assert np.array_equal(rec.model.vocab.decode_tokens(again.tokens), recommend_world["codes"])

    # A damaged codes file is noticed by its digest and encoded again, never used.
    codes_file = next((recommend_world["root"] / "cache").rglob("codes-*.npy"))
    damaged = np.load(codes_file)
    damaged[0] = (damaged[0] + 1) % 16
    np.save(codes_file, damaged)
    with caplog.at_level(logging.WARNING, logger="recbase.recommend"):
        third = rec.load_catalog(recommend_world["catalog"], progress=False)
    assert "digest mismatch" in caplog.text
    assert np.array_equal(third.tokens, again.tokens)


def test_damaged_embeddings_are_embedded_again(rec, recommend_world, caplog):
    npy = next(p for p in (recommend_world["root"] / "cache").rglob("news.npy"))
    npy.write_bytes(npy.read_bytes()[:-64])   # truncated
    with caplog.at_level(logging.WARNING, logger="recbase.recommend"):
        again = rec.load_catalog(recommend_world["catalog"], progress=False)
    assert "computing it again" in caplog.text
    assert np.array_equal(rec.model.vocab.decode_tokens(again.tokens), recommend_world["codes"])


def test_changed_texts_are_embedded_again(rec, recommend_world, tmp_path):
    table = pq.read_table(recommend_world["catalog"] / "items.parquet")
    texts = table.column("text").to_pylist()
    texts[0] = "Describe a news article:\n{\"title\": \"Something else entirely\"}"
    changed = tmp_path / "items.parquet"
    pq.write_table(table.set_column(table.column_names.index("text"), "text", pa.array(texts)), changed)
    catalog = rec.load_catalog(changed, progress=False)
    assert catalog.domain == "news" and catalog.texts[0] == texts[0]
    assert len(list((recommend_world["root"] / "cache" / "catalogs").iterdir())) >= 2


def test_bad_catalogs_are_named(tmp_path):
    path = tmp_path / "items.parquet"
    pq.write_table(pa.table({"item_id": ["a", "b", "a"], "text": ["x", "y", "z"]}), path)
    with pytest.raises(ValueError, match=r"items.parquet: row 2: field 'item_id' 'a' repeats row 0"):
        read_catalog_table(path)
    pq.write_table(pa.table({"item_id": ["a", "b"], "text": ["x", " "]}), path)
    with pytest.raises(ValueError, match=r"items.parquet: row 1 \(item_id 'b'\): field 'text' is empty"):
        read_catalog_table(path)
    pq.write_table(pa.table({"id": ["a"], "title": ["x"]}), path)
    with pytest.raises(ValueError, match="missing column"):
        read_catalog_table(path)


def test_a_raw_dataset_is_read_through_its_reader(tmp_path):
    (tmp_path / "items.csv").write_text("sku,title\ns1,Red kettle\ns2,Blue mug\n")
    (tmp_path / "events.csv").write_text("user,sku\nu1,s1\n")
    from recbase.data.readers.generic import GenericSpec

    spec = GenericSpec(items="items.csv", interactions="events.csv", item_id="sku", user_id="user",
                       text_fields=["title"], kind="product")
    domain, ids, texts = read_catalog_table(tmp_path, "generic", "shop", spec=spec)
    assert domain == "shop" and ids == ["s1", "s2"] and "Blue mug" in texts[1]


def test_a_model_of_another_tokenizer_is_refused(recommend_world, tmp_path):
    meta = json.loads((recommend_world["model"] / "recbase.json").read_text())
    other = tmp_path / "model"
    other.mkdir()
    for f in recommend_world["model"].iterdir():
        (other / f.name).write_bytes(f.read_bytes())
    (other / "recbase.json").write_text(json.dumps({**meta, "tokenizer_hash": "0" * 64}))
    with pytest.raises(TokenizerMismatch, match="concept ids are not comparable"):
        Recommender.from_pretrained(other, recommend_world["tokenizer"])


def _cli(capsys, *args) -> tuple[int, str, str]:
    from recbase.cli import main

    status = main(["recommend", *map(str, args)])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_cli_prints_k_catalog_items_and_one_line_errors(recommend_world, capsys):
    w = recommend_world
    common = ["--model", w["model"], "--tokenizer", w["tokenizer"], "--catalog", w["catalog"],
              "--cache-dir", w["root"] / "cache"]
    status, out, _ = _cli(capsys, *common, "--history", *w["cycle"][:2], "-k", 4)
    assert status == 0, out
    lines = out.strip().splitlines()
    assert lines[0].startswith("top 4 of 60 news items after a history of 2")
    rows = [line.split() for line in lines[2:]]
    assert [r[0] for r in rows] == ["1", "2", "3", "4"] and rows[0][2] == w["cycle"][2]
    assert all(r[2] in w["ids"] for r in rows)

    user = pq.read_table(w["catalog"] / "interactions.parquet").column("user_id")[0].as_py()
    status, out, _ = _cli(capsys, *common, "--user", user, "-k", 3, "--json")
    assert status == 0, out
    assert len(json.loads(out)["items"]) == 3

    status, out, err = _cli(capsys, *common, "--history", "missing-item")
    assert status == 2 and out == ""
    # the last line: the model loader's progress bar comes first
    assert err.splitlines()[-1] == "error: history: 1 item id(s) not in catalog 'news': 'missing-item'"


def test_python_m_recbase_is_the_recbase_command():
    done = subprocess.run([sys.executable, "-m", "recbase", "recommend", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: recbase recommend")


def test_catalogs_are_chosen_by_name(rec, catalog, recommend_world):
    movies = rec.load_catalog(recommend_world["data"] / "movies", progress=False)   # a training domain
    assert np.array_equal(rec.model.vocab.decode_tokens(movies.tokens),
                          rec.tokenizer.encode_catalog(*_movies_embeddings_and_stats(rec, recommend_world)))
    with pytest.raises(ValueError, match=r"2 catalogs loaded \(news, movies\): name one"):
        rec.recommend(recommend_world["cycle"][:1])
    assert rec.catalog("movies") is movies and rec.catalog("news").domain == "news"
    found = rec.recommend(movies.item_ids[:2], k=3, catalog="movies")
    assert len(found) == 3 and all(r.item_id in movies.row for r in found)


def _movies_embeddings_and_stats(rec, world):
    from recbase.tokenizer.embed import load_embeddings

    emb, _ = load_embeddings(world["root"] / "embeddings", "movies")
    return emb, rec.tokenizer.domain_stats["movies"]   # the statistics stored at training, not recomputed
