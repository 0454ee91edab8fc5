"""The embedding stage: output format, resume after a crash, skipping finished domains, array tasks + merge, the
real encoder's fast path against its float32 single-call path, bad input."""
from __future__ import annotations

import json

import numpy as np
import pytest

from recbase.cli import main
from recbase.data.tables import DomainTables, IngestSummary, make_interactions_table, make_items_table, write_domain
from recbase.errors import UserError
from recbase.tokenizer.embed import (HashingEmbedder, chunk_owner, embed_domain, embed_folder, item_ids_sha256,
                                     load_embeddings, make_embedder, merge_folder)


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
    assert sorted(p.name for p in (emb / ".parts" / "books").glob("*/chunk_*")) == ["chunk_000000.npy"]

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


class SettingsEmbedder(HashingEmbedder):
    """The hashing embedder under a setting that would change real vectors (as precision does)."""

    def __init__(self, precision: str):
        super().__init__()
        self.settings = {"precision": precision}


def test_other_settings_replace_embeddings_only_with_overwrite(tmp_path, capsys):
    data, emb = tmp_path / "data", tmp_path / "emb"
    write_items(data, "books", texts(20, "book"))
    assert embed_domain(data / "books", emb, SettingsEmbedder("float32"), progress=False)["embedded"] == 20
    assert embed_domain(data / "books", emb, SettingsEmbedder("float32"), progress=False)["skipped"]
    before = (emb / "books.npy").read_bytes()
    with pytest.raises(UserError, match=r"books.json: embedded with another precision \('float32', now 'bfloat16'\)"):
        embed_domain(data / "books", emb, SettingsEmbedder("bfloat16"), progress=False)
    assert (emb / "books.npy").read_bytes() == before
    again = embed_domain(data / "books", emb, SettingsEmbedder("bfloat16"), progress=False, overwrite=True)
    assert again["embedded"] == 20 and json.loads((emb / "books.json").read_text())["precision"] == "bfloat16"
    write_items(data, "books", texts(30, "book"))                     # changed items are embedded again anyway
    assert embed_domain(data / "books", emb, SettingsEmbedder("bfloat16"), progress=False)["embedded"] == 30
    # the command checks every domain before embedding any, and names the option
    write_items(data, "films", texts(10, "film"))
    capsys.readouterr()
    assert main(["embed", "--data", str(data), "--out", str(emb), "--model", "hashing"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "books.json: embedded with another" in err and "--overwrite" in err
    assert not (emb / "films.json").exists()


def test_two_array_tasks_and_a_merge_equal_one_run(tmp_path):
    data = tmp_path / "data"
    write_items(data, "books", texts(70, "book"))    # 5 chunks of 16
    write_items(data, "games", texts(9, "game"))     # 1 chunk
    one = embed_folder(data, tmp_path / "one", model="hashing", chunk_size=16, progress=False)
    split = tmp_path / "split"
    t0 = embed_folder(data, split, model="hashing", chunk_size=16, progress=False, task_index=0, num_tasks=2)
    assert not (split / "books.npy").exists() and not t0[0]["merged"]
    owned = {d: [c for c in range(n) if chunk_owner(d, c, 2) == 0] for d, n in (("books", 5), ("games", 1))}
    assert [s["embedded"] for s in t0] == [sum(min(16, 70 - 16 * c) for c in owned["books"]), 9 * len(owned["games"])]
    assert len(list((split / ".parts" / "books").glob("*/chunk_*"))) == len(owned["books"]) in (2, 3)
    with pytest.raises(UserError, match=r"chunks missing; task\(s\) 1 of 2 have not finished"):
        merge_folder(data, split, num_tasks=2)

    t1 = embed_folder(data, split, model="hashing", chunk_size=16, progress=False, task_index=1, num_tasks=2)
    assert sum(s["embedded"] for s in t0 + t1) == 79
    merged = merge_folder(data, split, num_tasks=2)
    assert [s["domain"] for s in merged] == ["books", "games"] and not any(s["skipped"] for s in merged)
    for domain in ("books", "games"):
        np.testing.assert_array_equal(np.load(split / f"{domain}.npy"), np.load(tmp_path / "one" / f"{domain}.npy"))
        assert (split / f"{domain}.json").read_text() == (tmp_path / "one" / f"{domain}.json").read_text()
    assert not (split / ".parts").exists() and [s["n_items"] for s in one] == [70, 9]
    assert all(s["skipped"] for s in merge_folder(data, split, num_tasks=2))
    with pytest.raises(UserError, match=r"task_index=2 is outside the allowed range 0..1 \(num_tasks=2\)"):
        embed_folder(data, split, model="hashing", task_index=2, num_tasks=2)


def test_merge_before_any_task_names_the_folder(tmp_path):
    write_items(tmp_path / "data", "books", texts(5, "book"))
    with pytest.raises(UserError, match="no chunks of the current 'books' catalog"):
        merge_folder(tmp_path / "data", tmp_path / "emb", num_tasks=4)


def test_unknown_precision_is_named():
    with pytest.raises(UserError, match="precision='int4' is not one of auto, float32, bfloat16, float16"):
        make_embedder(precision="int4")


def test_fast_path_tracks_the_float32_single_call():
    """bfloat16 weights and texts dealt to two single-threaded workers: the same vectors as one float32 call (cosine
    >= 0.99, the bar for replacing existing embeddings), in input order, with the precision recorded."""
    from recbase.tokenizer.embed import SentenceTransformerEmbedder

    items = [f"Describe a product:\n{{\"title\": \"{w} {k}\", \"categories\": \"{c}\"}}"
             for k in range(12) for w, c in (("Sanding roll grit", "Industrial"), ("Lipstick shade", "Beauty"),
                                              ("Hardcover novel volume", "Books"))] + ["Describe a movie: Up (2009)"]
    reference = SentenceTransformerEmbedder(batch_size=8, precision="float32", workers=1)
    fast = SentenceTransformerEmbedder(batch_size=8, precision="bfloat16", workers=2)
    assert fast.settings == {"precision": "bfloat16", "max_seq_length": 256}
    a, b = reference.encode(items), fast.encode(items)
    cosine = np.sum(a * b, axis=1)
    assert cosine.min() >= 0.99, cosine.min()
    assert (np.argmax(b @ a.T, axis=1) == np.arange(len(items))).all()   # each row is its own text's vector
    np.testing.assert_allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-5)


@pytest.mark.gpu
def test_cuda_float16_tracks_cpu_float32():
    import torch

    from recbase.tokenizer.embed import SentenceTransformerEmbedder

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")

    items = [f"Describe a book:\n{{\"title\": \"Volume {k} of the saga\"}}" for k in range(300)]
    gpu = SentenceTransformerEmbedder(batch_size=256, device="cuda")
    assert gpu.settings["precision"] == "float16" and gpu.workers == 1
    cpu = SentenceTransformerEmbedder(batch_size=64, device="cpu", precision="float32", workers=1)
    assert np.sum(gpu.encode(items) * cpu.encode(items), axis=1).min() >= 0.99
