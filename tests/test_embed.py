"""The embedding stage: output format, resume after a crash, skipping finished domains, bad input."""
from __future__ import annotations

import json

import numpy as np
import pytest

from recbase.data.tables import DomainTables, IngestSummary, make_interactions_table, make_items_table, write_domain
from recbase.errors import UserError
from recbase.tokenizer.embed import (HashingEmbedder, embed_domain, embed_folder, item_ids_sha256, load_embeddings,
                                     make_embedder)


def write_items(root, domain: str, texts: list[str]) -> None:
    ids = [f"{domain}-{i}" for i in range(len(texts))]
    inter = make_interactions_table(domain, ["u"], ids[:1], [0])
    write_domain(DomainTables(domain, make_items_table(domain, ids, texts), inter, IngestSummary(domain)), root)


def texts(n: int, word: str) -> list[str]:
    return [f"Describe a {word}: {{\"title\": \"{word} number {i}\", \"tag\": \"t{i % 7}\"}}" for i in range(n)]


class CrashingEmbedder(HashingEmbedder):
    """Fails on its second call, like a job killed half-way through a domain."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def encode(self, batch):
        self.calls += 1
        if self.calls == 2:
            raise RuntimeError("killed")
        return super().encode(batch)


def test_output_format(tmp_path):
    write_items(tmp_path / "data", "books", texts(50, "book"))
    write_items(tmp_path / "data", "games", texts(30, "game"))
    summaries = embed_folder(tmp_path / "data", tmp_path / "emb", model="hashing", chunk_size=16, progress=False)
    assert [s["domain"] for s in summaries] == ["books", "games"]
    emb, meta = load_embeddings(tmp_path / "emb", "books", [f"books-{i}" for i in range(50)])
    assert emb.dtype == np.float16 and emb.shape == (50, 384)
    assert meta == {"model": "hashing", "dim": 384, "n_items": 50,
                    "item_ids_sha256": item_ids_sha256([f"books-{i}" for i in range(50)]),
                    "texts_sha256": item_ids_sha256(texts(50, "book"))}
    np.testing.assert_allclose(np.linalg.norm(emb.astype(np.float32), axis=1), 1.0, atol=2e-3)
    np.testing.assert_array_equal(emb, HashingEmbedder().encode(texts(50, "book")).astype(np.float16))
    assert not (tmp_path / "emb" / ".parts").exists()


def test_resume_after_a_crash_embeds_only_the_rest(tmp_path):
    data, emb = tmp_path / "data", tmp_path / "emb"
    write_items(data, "books", texts(40, "book"))
    with pytest.raises(RuntimeError, match="killed"):
        embed_domain(data / "books", emb, CrashingEmbedder(), chunk_size=16, progress=False)
    assert not (emb / "books.npy").exists() and not (emb / "books.json").exists()
    assert sorted(p.name for p in (emb / ".parts" / "books").glob("chunk_*")) == ["chunk_000000.npy"]

    resumed = embed_domain(data / "books", emb, HashingEmbedder(), chunk_size=16, progress=False)
    assert resumed["embedded"] == 24  # the first chunk of 16 was kept
    fresh = embed_folder(data, tmp_path / "fresh", model="hashing", chunk_size=16, progress=False)
    assert fresh[0]["embedded"] == 40
    np.testing.assert_array_equal(np.load(emb / "books.npy"), np.load(tmp_path / "fresh" / "books.npy"))

    again = embed_folder(data, emb, model="hashing", chunk_size=16, progress=False)
    assert again[0]["skipped"] and again[0]["embedded"] == 0


def test_chunks_of_another_catalog_are_not_reused(tmp_path):
    data, emb = tmp_path / "data", tmp_path / "emb"
    write_items(data, "books", texts(40, "book"))
    with pytest.raises(RuntimeError):
        embed_domain(data / "books", emb, CrashingEmbedder(), chunk_size=16, progress=False)
    write_items(data, "books", texts(40, "novel"))  # the catalog changed before the rerun
    summary = embed_domain(data / "books", emb, HashingEmbedder(), chunk_size=16, progress=False)
    assert summary["embedded"] == 40
    np.testing.assert_array_equal(np.load(emb / "books.npy"),
                                  HashingEmbedder().encode(texts(40, "novel")).astype(np.float16))
    # Finished embeddings of the old texts are not taken as up to date either.
    write_items(data, "books", texts(40, "poem"))
    assert embed_folder(data, emb, model="hashing", chunk_size=16, progress=False)[0]["embedded"] == 40


def test_changed_catalog_is_detected_on_load(tmp_path):
    write_items(tmp_path / "data", "books", texts(10, "book"))
    embed_folder(tmp_path / "data", tmp_path / "emb", model="hashing", progress=False)
    with pytest.raises(ValueError, match="item_ids_sha256 does not match"):
        load_embeddings(tmp_path / "emb", "books", [f"books-{i}" for i in range(11)])
    with pytest.raises(UserError, match="games.json: missing"):
        load_embeddings(tmp_path / "emb", "games")
    meta = json.loads((tmp_path / "emb" / "books.json").read_text())
    meta["n_items"] = 12
    (tmp_path / "emb" / "books.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="does not match books.json"):
        load_embeddings(tmp_path / "emb", "books")


def test_empty_text_names_file_row_and_field(tmp_path):
    bad = texts(5, "book")
    bad[3] = "  "
    write_items(tmp_path / "data", "books", bad)
    with pytest.raises(ValueError, match=r"books/items.parquet: row 3 \(item_id 'books-3'\): field 'text' is empty"):
        embed_folder(tmp_path / "data", tmp_path / "emb", model="hashing", progress=False)


def test_unknown_domain_is_named(tmp_path):
    write_items(tmp_path / "data", "books", texts(5, "book"))
    with pytest.raises(UserError, match="no domain\\(s\\) games; found: books"):
        embed_folder(tmp_path / "data", tmp_path / "emb", model="hashing", domains=["games"], progress=False)


def test_packaged_minilm_embeds_offline():
    """The real default encoder: 384-d unit vectors, and related texts closer than unrelated ones."""
    embedder = make_embedder()
    assert embedder.name == "sentence-transformers/all-MiniLM-L6-v2" and embedder.dim == 384
    e = embedder.encode(["Describe a movie: Toy Story (1995), Animation | Children",
                         "Describe a movie: Toy Story 2 (1999), Animation | Children",
                         "Describe a product: PORTER-CABLE 80 grit adhesive sanding roll"])
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    assert e[0] @ e[1] > e[0] @ e[2] + 0.2


def test_nonpositive_chunk_size_is_refused_and_writes_nothing(tmp_path, capsys):
    from recbase.cli import main

    write_items(tmp_path / "data", "books", texts(5, "book"))
    args = ["embed", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "emb"), "--model", "hashing"]
    assert main([*args, "--chunk-size", "-1"]) == 2
    assert "chunk_size=-1 is outside the allowed range >= 1" in capsys.readouterr().err
    assert not (tmp_path / "emb" / "books.json").exists()
    assert main([*args, "--chunk-size", "2"]) == 0
    assert np.load(tmp_path / "emb" / "books.npy").shape == (5, 384)


def test_a_wrong_shape_on_disk_is_not_up_to_date(tmp_path):
    write_items(tmp_path / "data", "books", texts(5, "book"))
    embed_folder(tmp_path / "data", tmp_path / "emb", model="hashing", progress=False)
    np.save(tmp_path / "emb" / "books.npy", np.zeros((0, 384), np.float16))
    assert embed_folder(tmp_path / "data", tmp_path / "emb", model="hashing", progress=False)[0]["embedded"] == 5


def test_changed_texts_are_detected_by_encode(tmp_path):
    from recbase.errors import UserError
    from recbase.tokenizer.encode import write_codes
    from recbase.tokenizer.train import TokenizerConfig, train_from_folders

    data, emb = tmp_path / "data", tmp_path / "emb"
    write_items(data, "books", texts(40, "book"))
    embed_folder(data, emb, model="hashing", progress=False)
    tok = train_from_folders(TokenizerConfig(kind="rqkmeans", levels=2, codebook_size=4), data, emb,
                             tmp_path / "tok", progress=False)
    write_items(data, "books", texts(40, "poem"))            # same ids, new texts
    with pytest.raises(UserError, match=r"books.json: texts_sha256 does not match the current item texts"):
        write_codes(tok, data, emb, tmp_path / "codes.parquet")
