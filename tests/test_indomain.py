"""TIGER's in-domain leave-one-out protocol on a tiny hand-built P5 folder: split, history cap, unique code tuples,
baseline ranks and Recall/NDCG worked out by hand, and the whole benchmark command end to end (slow)."""
import json
import logging
import math
import tarfile
from functools import partial

import numpy as np
import pytest

from eval_helpers import one_torch_thread  # noqa: F401  (autouse fixture)
from eval_helpers import save_export, tiny_model
from recbase.data.codes import read_codes
from recbase.data.ingest import ingest
from recbase.data.sequences import item_counts, load_domain
from recbase.data.shard_format import decode_block
from recbase.data.shards import ShardConfig, build_shards
from recbase.eval.beam_store import beam_key, beam_path, describe, saved_or_searched, stamp_path
from recbase.eval.fusion import collect_candidates, fused_ranks, generative_ranks, grid
from recbase.eval.leave_one_out import (history_tokens, leave_one_out, popularity_ranks, ranks_from_scores,
                                        search_beams, text_knn_ranks, training_counts)
from recbase.eval.metrics import retrieval_metrics
from recbase.eval.retrieval import Retriever
from recbase.eval.scoring import CandidateScorer
from recbase.eval.trie import CodeTrie
from recbase.tokenizer.embed import embed_folder, load_embeddings
from recbase.tokenizer.encode import write_codes
from recbase.tokenizer.train import TokenizerConfig, train_from_folders

TITLES = {1: "red nail polish", 2: "blue nail polish", 3: "shea butter", 4: "shea butter",  # 3, 4: same title
          5: "coconut shampoo", 6: "argan oil shampoo", 7: None, 8: "rose perfume"}
LONG_USER = [1, 2, 3, 4, 5, 6, 7, 8] * 4   # 32 items: more than the 20-item history cap
LINES = ["1 1 2 3 5", "2 3 4 5 6 8", "3 " + " ".join(map(str, LONG_USER)), "4 8 7 6", "5 2 1"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("p5world")
    src = root / "tiny-p5"
    src.mkdir()
    (src / "sequential_data.txt").write_text("\n".join(LINES) + "\n")
    (src / "datamaps.json").write_text(json.dumps({"id2item": {str(i): f"B{i:09d}" for i in TITLES}}))
    (src / "item_titles.jsonl").write_text("".join(
        json.dumps({"p5_item_id": i, "asin": f"B{i:09d}", "title": t}) + "\n" for i, t in TITLES.items()))
    ingest("p5", src, root / "data", domain="tiny", min_user_interactions=0, max_history=0)
    list(embed_folder(root / "data", root / "emb", "hashing"))
    cfg = TokenizerConfig(kind="rqkmeans", levels=2, codebook_size=4, disambiguate=True)
    tok = train_from_folders(cfg, root / "data", root / "emb", root / "tok", ["tiny"], progress=False)
    write_codes(tok, root / "data", root / "emb", root / "codes.parquet", ["tiny"])
    codes = read_codes(root / "codes.parquet")
    return {"root": root, "src": src, "codes": codes, "seqs": load_domain(root / "data" / "tiny", codes)}


def _items(world, rows) -> list[int]:
    """P5 item ids of catalog rows."""
    ids = world["codes"].by_domain["tiny"][0].to_pylist()
    return [int(ids[r]) for r in rows]


def test_targets_are_the_last_two_items_and_never_in_the_training_shards(world):
    seqs, codes = world["seqs"], world["codes"]
    full = {u: _items(world, seqs.item_rows[s:s + c]) for u, s, c in zip(seqs.user_ids, seqs.starts, seqs.counts)}
    valid, test = leave_one_out(seqs, "valid"), leave_one_out(seqs, "test")
    assert valid.user_ids == test.user_ids and "5" not in test.user_ids   # user 5 has 2 items: counted, not ranked
    assert test.skipped == {"users with fewer than 3 items": 1}
    for u, v, t in zip(test.user_ids, valid.targets, test.targets):
        assert _items(world, [t, v]) == [full[u][-1], full[u][-2]]

    shards = build_shards(ShardConfig(data_dir=str(world["root"] / "data"), domains=["tiny"],
                                      codes_path=str(world["root"] / "codes.parquet"),
                                      out_dir=str(world["root"] / "shards"), name="tiny", holdout=1))
    item_tokens = codes.vocab.encode_codes(codes.by_domain["tiny"][1]).tolist()
    token_of = dict(zip(_items(world, range(len(TITLES))), item_tokens))
    trained = {}
    for path in sorted((shards / "train").glob("*.tar")):
        with tarfile.open(path) as tar:
            files = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        for key in sorted({n.split(".")[0] for n in files}):
            sample = {n[len(key) + 1:]: v for n, v in files.items() if n.startswith(key + ".")}
            tokens, offsets, meta = decode_block({"__key__": key, **sample}, str(path))
            for i, user in enumerate(meta["users"]):
                trained[user] = tokens[offsets[i]:offsets[i + 1]].tolist()
    for user in test.user_ids:   # bos, then exactly the items before the validation target
        expected = [codes.vocab.bos_id] + [tok for item in full[user][:-2] for tok in token_of[item]]
        assert trained[user] == expected
    counts = training_counts(seqs, len(TITLES))
    assert counts.sum() == sum(max(len(s) - 2, 0) for s in full.values())


def test_history_is_capped_at_the_most_recent_items(world):
    seqs = world["seqs"]
    for split, end in (("test", -1), ("valid", -2)):
        loo = leave_one_out(seqs, split, max_history=20)
        row = loo.user_ids.index("3")
        assert _items(world, loo.histories[row]) == LONG_USER[end - 20:end]
        assert _items(world, loo.histories[loo.user_ids.index("1")]) == [1, 2, 3, 5][:end]
    vocab = world["codes"].vocab
    item_tokens = vocab.encode_codes(world["codes"].by_domain["tiny"][1])
    tokens = history_tokens(leave_one_out(seqs, "test", 20).histories, item_tokens, vocab)
    assert len(tokens[row]) == 1 + 20 * vocab.levels and tokens[row][0] == vocab.bos_id


def test_every_item_has_its_own_code_tuple(world):
    ids, codes = world["codes"].by_domain["tiny"]
    ids = ids.to_pylist()
    first_two = {tuple(c) for c in codes[:, :2].tolist()}
    assert len(first_two) < len(ids)                         # the tokenizer's own levels collide (3 and 4 at least)
    assert len({tuple(c) for c in codes.tolist()}) == len(ids)   # the collision level separates them
    trie = CodeTrie.build(codes, ids, world["codes"].vocab.codebook_size)
    assert trie.n_tuples == len(ids) and all(len(trie.items_of(t)) == 1 for t in range(trie.n_tuples))


def test_popularity_ordered_collisions_count_training_interactions_only(world, tmp_path):
    """The runner's tokenizer orders a bucket by interactions without each user's last two items, so no validation
    or test target shapes an item's code."""
    root, seqs = world["root"], world["seqs"]
    cfg = TokenizerConfig(kind="rqkmeans", levels=2, codebook_size=4, disambiguate=True, collision_order="popularity")
    tok = train_from_folders(cfg, root / "data", root / "emb", tmp_path / "tok", ["tiny"], progress=False,
                             exclude_last=2)
    n = len(world["codes"].by_domain["tiny"][0])
    np.testing.assert_array_equal(tok.item_counts["tiny"], training_counts(seqs, n))
    assert (item_counts(seqs, n) != training_counts(seqs, n)).any()   # the targets would change the counts


def test_recall_and_ndcg_by_hand():
    # ranks 1, 3, 7, 12 and a target the beam never returned
    m = retrieval_metrics([1, 3, 7, 12, float("inf")], ks=[5, 10])
    assert m["recall@5"] == pytest.approx(2 / 5) and m["recall@10"] == pytest.approx(3 / 5)
    assert m["ndcg@5"] == pytest.approx((1 + 1 / math.log2(4)) / 5)
    assert m["ndcg@10"] == pytest.approx((1 + 1 / math.log2(4) + 1 / math.log2(8)) / 5)


def test_baseline_ranks_by_hand():
    scores = np.array([[0.1, 0.5, 0.5, 0.9],    # target 2 ties with item 1, which is earlier: rank 3
                       [0.9, 0.5, 0.5, 0.1]])   # target 1 ties with item 2, which is later: rank 2
    assert ranks_from_scores(scores, np.array([2, 1])).tolist() == [3, 2]
    counts = np.array([5, 9, 5, 0])
    assert popularity_ranks(counts, np.array([1, 0, 2, 3])).tolist() == [1, 2, 3, 4]
    emb = np.array([[1, 0], [0.9, 0.1], [0, 1], [-1, 0]], np.float32)
    # last history item 0: item 0 itself is excluded, so 1 is first, 2 second, 3 last
    hist = [np.array([2, 0])] * 3
    assert text_knn_ranks(emb, hist, np.array([1, 2, 0])).tolist() == [1, 2, 4]


@pytest.mark.slow
def test_one_command_runs_the_benchmark(world, tmp_path, searches, capsys):
    from recbase.cli import main

    out = tmp_path / "bench"
    fusion = ["fusion_text_items=2", "fusion_decays=[0,0.5]", "fusion_alphas=[0,1]"]
    command = ["indomain", f"source={world['src']}", f"out={out}", "embedder=hashing", "seeds=[0,1]",
               'tokenizer_overrides=["kind=rqkmeans","levels=2","codebook_size=4"]', "train_steps=4",
               "checkpoint_every=2", 'train_overrides=["optim.global_batch_tokens=1024","optim.warmup_steps=1",'
               '"optim.micro_batch_size=8","logging.valid_every_steps=0"]', "beam_width=3", *fusion]
    # a lever run: checkpoints ranked on validation, the fusion chosen there, the test targets left alone
    assert main([*command, "test=false"]) == 0
    selection = json.loads((out / "run" / "metrics.json").read_text())
    assert selection["test"] is None and all("test" not in r for r in selection["seeds"].values())
    assert all("test" not in r["fusion"] and len(r["fusion"]["valid"]) == 2 * 2 * 2
               for r in selection["seeds"].values())
    report = (out / "run" / "report.md").read_text()
    assert "| recbase, generative + text fusion (this run) | not ranked (test=false) |" in report
    assert "| recbase, generative only (this run) | not ranked (test=false) |" in report
    # the same setting with the test: only the test targets are ranked, with the checkpoint and fusion chosen before
    assert main(command) == 0
    results = json.loads((out / "run" / "metrics.json").read_text())
    for seed, r in selection["seeds"].items():
        assert results["seeds"][seed]["valid"] == r["valid"]   # timings included: validation was not ranked again
        assert results["seeds"][seed]["selected"] == r["selected"]
        assert {k: v for k, v in results["seeds"][seed]["fusion"].items() if k != "test"} == r["fusion"]
    assert results["users"] == {"valid": 4, "test": 4} and results["catalog_items"] == 8
    for seed in ("0", "1"):
        r = results["seeds"][seed]
        assert set(r["valid"]) == {"global_step2", "global_step4"} and r["selected"] in r["valid"]
        assert 0 <= r["test"]["recall@5"] <= 1 and r["test"]["recall@5"] == r["test"]["recall@10"]   # 3 returned
        assert r["fusion"]["chosen"] in r["fusion"]["valid"] and 0 <= r["fusion"]["test"]["recall@10"] <= 1
    # the two seeds' selected checkpoints as one ensemble: its own rows beside the per-seed ones, which stay;
    # each seed's beams of both splits come from its own fusion passes, searched there and not again
    searches.clear()
    capsys.readouterr()
    assert main([*command, "ensemble=true"]) == 0
    assert searches == []
    log = capsys.readouterr().out
    for split in ("valid", "test"):
        assert f"[ensemble {split}] beams: seed0 {results['seeds']['0']['selected']} reused (read from " in log
    both = json.loads((out / "run" / "metrics.json").read_text())
    assert both["seeds"] == results["seeds"] and both["fusion_test"] == results["fusion_test"]
    ens = both["ensemble"]
    assert ens["protocol"]["members"] == {seed: results["seeds"][seed]["selected"] for seed in ("0", "1")}
    assert ens["chosen"] in ens["valid"] and len(ens["valid"]) == 2 * 2 * 2
    assert 0 <= ens["test"]["recall@10"] <= 1 and 0 <= ens["generative_test"]["recall@10"] <= 1
    assert json.loads((out / "run" / "ensemble.json").read_text()) == ens
    report = (out / "run" / "report.md").read_text()
    assert "| recbase, 2-seed ensemble + text fusion (this run; one ranking, no spread) |" in report
    assert "| recbase, 2-seed ensemble, generative only (this run) |" in report
    assert "| ensemble | generative only: the union of the beams by mean log P |" in report
    # the same ensemble with its beams searched again (2 models x 2 splits, one call of 4 users each): the same
    # numbers, and the beams saved anew
    for path in (*(out / "run").glob("seed*/beam_*"), out / "run" / "ensemble.json"):
        path.unlink()
    assert main([*command, "ensemble=true"]) == 0
    assert searches == [4] * 4 and capsys.readouterr().out.count(" searched in ") == 4
    assert sorted(p.name for p in (out / "run" / "seed1").glob("beam_*")) == [
        "beam_test.json", "beam_test.parquet", "beam_valid.json", "beam_valid.parquet"]
    searched = json.loads((out / "run" / "ensemble.json").read_text())
    for key in ("valid", "chosen", "generative_valid", "generative_test"):
        assert searched[key] == ens[key], key
    assert {k: v for k, v in searched["test"].items() if k != "cost"} == {
        k: v for k, v in ens["test"].items() if k != "cost"}
    # a rerun trains and ranks nothing again: every seed's results are read back
    before = (out / "run" / "seed0" / "leave_one_out.json").read_text()
    assert main(["indomain", f"source={world['src']}", f"out={out}", "embedder=hashing", "seeds=[0,1]",
                 'tokenizer_overrides=["kind=rqkmeans","levels=2","codebook_size=4"]', "train_steps=4",
                 "checkpoint_every=2", "beam_width=3", *fusion]) == 0
    assert json.loads((out / "run" / "metrics.json").read_text())["seeds"] == results["seeds"]
    assert (out / "run" / "seed0" / "leave_one_out.json").read_text() == before
    report = (out / "run" / "report.md").read_text()
    assert "TIGER (Rajput et al. 2023), published | 0.0454 | 0.0648 | 0.0321 | 0.0384" in report
    assert "popularity (same run)" in report and "text_knn (same run)" in report
    assert "| recbase, generative + text fusion (this run) |" in report and "(chosen)" in report
    # without fusion the table has the one generative row, with the same numbers
    assert main([*command, "fusion=false"]) == 0
    plain = json.loads((out / "run" / "metrics.json").read_text())
    assert plain["fusion_test"] is None and plain["test"] == results["test"]
    assert "| recbase (this run) |" in (out / "run" / "report.md").read_text()


# ---------------------------------------------------------------------------- a seed's beam, saved and reused

def _beam_setup(world, tmp_path, seeds=(1, 2), beam_width=3):
    """Tiny random models on the world's catalog, each saved as an export (its identity) with its retriever."""
    codes = world["codes"]
    ids, item_codes = codes.by_domain["tiny"]
    ids = ids.to_pylist()
    trie = CodeTrie.build(item_codes, ids, codes.vocab.codebook_size)
    models = {}
    for seed in seeds:
        model = tiny_model(codes.vocab, seed=seed)
        export = save_export(model, codes.vocab, codes.tokenizer_hash, tmp_path / f"model{seed}")
        models[seed] = (export, Retriever(model, trie, codes.vocab.n_special, codes.vocab.bos_id, beam_width,
                                          batch_users=2, pad_id=codes.vocab.pad_id))
    return ids, codes.vocab.encode_codes(item_codes), models


def _beams(world, ids, tokens, export, retriever, loo, run_dir, max_history=20):
    key = beam_key(export, retriever, loo, ids, tokens, max_history)
    return saved_or_searched(beam_path(run_dir, loo.split), key, loo.user_ids,
                             partial(search_beams, retriever, loo, tokens, world["codes"].vocab))


@pytest.fixture
def searches(monkeypatch):
    """Counts the beam-search calls (one per chunk of users)."""
    calls = []
    search = Retriever.retrieve_batch
    monkeypatch.setattr(Retriever, "retrieve_batch", lambda self, h: calls.append(len(h)) or search(self, h))
    return calls


def test_an_ensemble_of_saved_beams_ranks_exactly_as_one_of_searched_beams(world, tmp_path, searches):
    ids, tokens, models = _beam_setup(world, tmp_path)
    emb = load_embeddings(world["root"] / "emb", "tiny", ids)[0].astype(np.float32)
    vocab = world["codes"].vocab
    for split in ("valid", "test"):
        loo = leave_one_out(world["seqs"], split)
        searched = {s: _beams(world, ids, tokens, e, r, loo, tmp_path / f"seed{s}") for s, (e, r) in models.items()}
        assert len(searches) == 2 and not any(b.reused for b in searched.values())   # one chunk per model
        reused = {s: _beams(world, ids, tokens, e, r, loo, tmp_path / f"seed{s}") for s, (e, r) in models.items()}
        assert len(searches) == 2, "a saved beam was searched again"
        searches.clear()
        for s, b in reused.items():
            assert b.reused and b.seconds == pytest.approx(searched[s].seconds, abs=1e-3)   # the search's, recorded
            assert b.found == searched[s].found                     # item ids and float32 log P, exactly
        line = describe({f"seed{s}": b for s, b in reused.items()})
        assert line.count(" reused (read from ") == 2 and " searched in " not in line
        assert f"{sum(b.seconds for b in reused.values()):.1f} s of beam search saved" in line

        def ensemble(beams):
            pairs = [(beams[s], CandidateScorer(r.model, tokens.shape[1], vocab.bos_id)) for s, (_, r) in models.items()]
            return collect_candidates(pairs, loo, tokens, vocab, ids, emb, [0.0, 0.5], 2)

        a, b = ensemble(searched), ensemble(reused)
        for field in ("rows", "logp", "n_beam"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
        assert a.pairs == b.pairs > 0 and b.seconds["beam"] == 0
        assert b.beam_reused == pytest.approx(a.seconds["beam"], abs=0.1)
        for setting in grid([0.0, 0.5], ["raw", "z"], [0.0, 1.0, 4.0]):
            np.testing.assert_array_equal(fused_ranks(a, loo.targets, setting), fused_ranks(b, loo.targets, setting))
        np.testing.assert_array_equal(generative_ranks(a, loo.targets), generative_ranks(b, loo.targets))


def test_a_beam_saved_under_another_key_is_searched_again_and_replaced(world, tmp_path, searches):
    ids, tokens, models = _beam_setup(world, tmp_path)
    (export, retriever), (other, other_retriever) = models[1], models[2]
    loo = leave_one_out(world["seqs"], "valid")
    first = _beams(world, ids, tokens, export, retriever, loo, tmp_path)

    def wider(r):
        return Retriever(r.model, r.trie, r.n_special, r.bos_id, 4, batch_users=2, pad_id=r.pad_id)

    # each change against the key of the step before it, whose beam replaced the saved one
    for changed, (e, r, history, note) in {
            "beam width": (export, wider(retriever), 20, "the saved one has another beam_width"),
            "checkpoint": (other, wider(other_retriever), 20, "the saved one has another checkpoint"),
            "history cap": (other, wider(other_retriever), 2, "the saved one has another users, max_history"),
    }.items():
        capped = leave_one_out(world["seqs"], "valid", history)
        searches.clear()
        again = _beams(world, ids, tokens, e, r, capped, tmp_path, history)
        assert searches and not again.reused and again.note == note, changed
        assert _beams(world, ids, tokens, e, r, capped, tmp_path, history).reused, changed   # the file was replaced
    assert all(len(f.items) == 4 for f in again.found)
    # the same key as the first call again: searched once more, the same beam as then
    searches.clear()
    back = _beams(world, ids, tokens, export, retriever, loo, tmp_path)
    assert searches and not back.reused and back.found == first.found


def test_a_damaged_beam_file_is_searched_again_never_used(world, tmp_path, searches, caplog):
    ids, tokens, models = _beam_setup(world, tmp_path, seeds=(1,))
    export, retriever = models[1]
    loo = leave_one_out(world["seqs"], "test")
    first = _beams(world, ids, tokens, export, retriever, loo, tmp_path)
    path = beam_path(tmp_path, "test")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    searches.clear()
    with caplog.at_level(logging.WARNING, logger="recbase.eval.beam_store"):
        again = _beams(world, ids, tokens, export, retriever, loo, tmp_path)
    assert searches and not again.reused and again.note == "beam_test.parquet damaged"
    assert f"{path}: SHA-256" in caplog.text and "the file is damaged, searching the beam again" in caplog.text
    assert again.found == first.found
    assert _beams(world, ids, tokens, export, retriever, loo, tmp_path).reused   # rewritten whole
    # a stamp lost (a kill between the two writes) or garbled: searched again, never read without it
    for damage in ("remove", "garble"):
        stamp = stamp_path(path)
        stamp.unlink() if damage == "remove" else stamp.write_text("{not json")
        searches.clear()
        again = _beams(world, ids, tokens, export, retriever, loo, tmp_path)
        assert searches and not again.reused and again.found == first.found, damage
