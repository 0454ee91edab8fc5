"""TIGER's in-domain leave-one-out protocol on a tiny hand-built P5 folder: split, history cap, unique code tuples,
baseline ranks and Recall/NDCG worked out by hand, and the whole benchmark command end to end (slow)."""
import json
import math
import tarfile

import numpy as np
import pytest

from recbase.data.codes import read_codes
from recbase.data.ingest import ingest
from recbase.data.sequences import item_counts, load_domain
from recbase.data.shard_format import decode_block
from recbase.data.shards import ShardConfig, build_shards
from recbase.eval.leave_one_out import (history_tokens, leave_one_out, popularity_ranks, ranks_from_scores,
                                        text_knn_ranks, training_counts)
from recbase.eval.metrics import retrieval_metrics
from recbase.eval.trie import CodeTrie
from recbase.tokenizer.embed import embed_folder
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
def test_one_command_runs_the_benchmark(world, tmp_path):
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
    # the two seeds' selected checkpoints as one ensemble: its own rows beside the per-seed ones, which stay
    assert main([*command, "ensemble=true"]) == 0
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
