"""The evaluate job end to end on tiny files: report outputs, numbers against direct computation, refusals."""
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from eval_helpers import one_torch_thread  # noqa: F401  (autouse fixture)
from eval_helpers import build_world, save_export, tiny_model, write_eval_set
from recbase.cli import main
from recbase.config import load_config
from recbase.data.evalsets import read_eval_set
from recbase.errors import UserError
from recbase.eval.job import EvalConfig, evaluate
from recbase.eval.metrics import auc
from recbase.eval.model_io import TokenizerMismatch, load_eval_model
from recbase.eval.scoring import CandidateScorer
from recbase.vocab import Vocab

VOCAB = Vocab(levels=3, codebook_size=8)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    w = build_world(root, VOCAB)
    w["model2"] = save_export(tiny_model(VOCAB, seed=1), VOCAB, "tok-abc", root / "model2")
    return w


def config(world, out, **kw) -> EvalConfig:
    fields = dict(models={"zero_shot": str(world["model"])}, eval_dir=str(world["eval_dir"]),
                  data_dir=str(world["data_dir"]), embeddings_dir=str(world["embeddings_dir"]),
                  codes=str(world["codes"]), out_dir=str(out))
    return EvalConfig(**{**fields, **kw})


def test_cli_end_to_end_writes_report(world, tmp_path):
    cfg_path = tmp_path / "eval.json"
    cfg_path.write_text(json.dumps({"eval_dir": str(world["eval_dir"]), "data_dir": str(world["data_dir"]),
                                    "embeddings_dir": str(world["embeddings_dir"]), "codes": str(world["codes"])}))
    out = tmp_path / "out"
    rc = main(["evaluate", "--config", str(cfg_path), "--model", f"zero_shot={world['model']}",
               "--model", f"finetuned={world['model2']}", f"out_dir={out}", "beam_width=8"])
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    books = metrics["domains"]["books"]
    assert books["users"] == 12 and books["pairs"] == 72
    assert books["history_items_unverified"] == 0
    for name in ("zero_shot", "finetuned"):
        r = books["models"][name]
        assert 0.0 <= r["auc"] <= 1.0 and 0.0 <= r["gauc"] <= 1.0
        assert r["auc_len_norm"] == pytest.approx(r["auc"])  # fixed width L: mean = sum / L, same ranking
        assert r["timing"]["pairs"] == 72 and r["timing"]["pairs_per_s"] > 0
        ret = r["retrieval"]
        assert ret["recall@1"] <= ret["recall@5"] <= ret["recall@10"] <= ret["recall@20"] <= 1.0
        assert metrics["overall"]["models"][name]["auc"] == pytest.approx(r["auc"])  # one domain
    assert set(books["baselines"]) == {"random", "text_raw", "text_centred", "popularity"}
    assert metrics["config"]["beam_width"] == 8
    report = (out / "report.md").read_text()
    assert "**Overall**" in report and "text sim (centred) AUC" in report
    assert "zero_shot AUC (PMI)" in report and "zero_shot PMI + text − bar" in report
    assert "Model comparison" in report and "Δ vs zero_shot" in report
    for png in ("auc", "gauc", "auc_len_norm", "recall_at_10", "ndcg_at_10", "mrr"):
        assert (out / f"{png}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_numbers_match_direct_computation(world, tmp_path):
    results = evaluate(config(world, tmp_path / "out", retrieval=False))
    books = results["domains"]["books"]
    # Model AUC: score every pair directly with the naive reference.
    em = load_eval_model("m", world["model"])
    es = read_eval_set(next(world["eval_dir"].glob("*.parquet")), VOCAB)
    naive = CandidateScorer(em.model, VOCAB.levels, VOCAB.bos_id, "naive")
    logp = [naive.score_user(h, c) for h, c in zip(es.histories, es.candidate_tokens)]
    labels_flat = np.concatenate(es.labels)
    scores = np.concatenate([lp.sum(1) for lp in logp])
    assert books["models"]["zero_shot"]["auc"] == pytest.approx(auc(scores, labels_flat), abs=1e-6)
    first_level = np.concatenate([lp[:, 0] for lp in logp])  # the default prefix_levels=1
    assert books["models"]["zero_shot"]["auc_prefix"] == pytest.approx(auc(first_level, labels_flat), abs=1e-6)
    # PMI: the same candidate scored after bos alone, subtracted level by level.
    prior = [naive.score_user(np.array([VOCAB.bos_id]), c) for c in es.candidate_tokens]
    pmi = [(lp - p).sum(1) for lp, p in zip(logp, prior)]
    assert books["models"]["zero_shot"]["auc_pmi"] == pytest.approx(auc(np.concatenate(pmi), labels_flat), abs=1e-6)
    pmi_first = np.concatenate([(lp - p)[:, 0] for lp, p in zip(logp, prior)])
    assert books["models"]["zero_shot"]["auc_pmi_prefix"] == pytest.approx(auc(pmi_first, labels_flat), abs=1e-6)
    # Centred text similarity, written out from the definition with the world's known histories.
    emb = np.load(world["embeddings_dir"] / "books.npy").astype(np.float64)
    emb -= emb.mean(0)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    row = {item: i for i, item in enumerate(world["items"])}
    inter = pq.read_table(world["data_dir"] / "books" / "interactions.parquet").to_pylist()
    sim, labels = [], []
    for r in world["rows"]:
        hist = [x["item_id"] for x in inter if x["user_id"] == r["user_id"]][:-1]
        profile = emb[[row[i] for i in hist]].mean(0)
        profile /= np.linalg.norm(profile)
        sim += [float(emb[row[c]] @ profile) for c in r["candidates"]]
        labels += r["labels"]
    assert books["baselines"]["text_centred"]["auc"] == pytest.approx(auc(sim, labels), abs=1e-6)
    # Fusion: per user, z(text) + 0.1 z(PMI), the default weight.
    fused, start = [], 0
    for r, p in zip(world["rows"], pmi):
        t = np.asarray(sim[start:start + len(p)])
        start += len(p)
        fused += list((t - t.mean()) / t.std() + 0.1 * (p - p.mean()) / p.std())
    assert books["models"]["zero_shot"]["auc_fused"] == pytest.approx(auc(fused, labels), abs=1e-6)
    # Popularity: each user's target is their only appearance in their own sequence, so it is removed.
    counts = {}
    for x in inter:
        counts[x["item_id"]] = counts.get(x["item_id"], 0) + 1
    for r in world["rows"]:
        counts[r["target"]] -= 1
    pop = [np.log1p(counts.get(c, 0)) for r in world["rows"] for c in r["candidates"]]
    assert books["baselines"]["popularity"]["auc"] == pytest.approx(auc(pop, labels), abs=1e-9)


def test_pair_scores_hold_every_pair_and_reproduce_the_metrics(world, tmp_path):
    results = evaluate(config(world, tmp_path / "out", retrieval=False))
    pairs = pq.read_table(tmp_path / "out" / "pairs" / "books.parquet").to_pandas()
    assert len(pairs) == results["domains"]["books"]["pairs"]
    logp = sum(pairs[f"zero_shot/logp_{lvl}"] for lvl in range(VOCAB.levels))
    prior = sum(pairs[f"zero_shot/prior_{lvl}"] for lvl in range(VOCAB.levels))
    books = results["domains"]["books"]
    assert books["models"]["zero_shot"]["auc"] == pytest.approx(auc(logp.to_numpy(), pairs["label"].to_numpy()))
    assert books["models"]["zero_shot"]["auc_pmi"] == pytest.approx(auc((logp - prior).to_numpy(),
                                                                         pairs["label"].to_numpy()))
    for name in ("random", "text_raw", "text_centred", "popularity"):
        assert books["baselines"][name]["auc"] == pytest.approx(auc(pairs[name].to_numpy(), pairs["label"].to_numpy()))


def test_random_baseline_is_drawn_per_domain():
    from recbase.eval.baselines import random_scores
    books, news = random_scores([6, 6], 0, "books"), random_scores([6, 6], 0, "news")
    assert all(np.array_equal(a, b) for a, b in zip(books, random_scores([6, 6], 0, "books")))
    assert not any(np.array_equal(a, b) for a, b in zip(books, news))
    assert not np.array_equal(books[0], random_scores([6], 1, "books")[0])


def test_tokenizer_hash_mismatch_is_refused(world, tmp_path):
    other = save_export(tiny_model(VOCAB), VOCAB, "tok-OTHER", tmp_path / "other_model")
    cfg = config(world, tmp_path / "out", models={"zero_shot": str(other)})
    with pytest.raises(TokenizerMismatch) as err:
        evaluate(cfg)
    msg = str(err.value)
    assert "tok-OTHER" in msg and "tok-abc" in msg
    assert str(other / "recbase.json") in msg and "books.parquet" in msg
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_bad_eval_row_names_file_row_and_field(world, tmp_path):
    rows = [dict(r) for r in world["rows"][:3]]
    rows[2]["history"] = rows[2]["history"][1:]  # bos dropped
    path = write_eval_set(tmp_path / "eval" / "books.parquet", rows, "tok-abc")
    with pytest.raises(ValueError, match=r"books\.parquet: row 2 .*field 'history' must start with bos"):
        evaluate(config(world, tmp_path / "out", eval_dir=str(path.parent), baselines=["random"]))


def test_eval_set_from_another_vocabulary_is_refused(world, tmp_path):
    rows = [dict(r) for r in world["rows"][:2]]
    rows[1]["candidate_tokens"] = [[t + VOCAB.codebook_size for t in c] for c in rows[1]["candidate_tokens"]]
    path = write_eval_set(tmp_path / "eval" / "books.parquet", rows, "tok-abc")
    with pytest.raises(ValueError, match=r"row 1 .*field 'candidate_tokens' has a token outside its level's range"):
        read_eval_set(path, VOCAB)


def test_preset_config_loads():
    configs = Path(__file__).resolve().parents[1] / "launch" / "configs"
    cfg = load_config(EvalConfig, "eval.json", ["max_users=5"], search_dirs=[configs])
    assert cfg.max_users == 5 and cfg.eval_dir.endswith("eval") and cfg.mode == "fast"


def test_config_rejects_unknown_keys_and_bad_values(world, tmp_path):
    with pytest.raises(ValueError, match="unknown key"):
        load_config(EvalConfig, None, ["beam_widht=4"])
    with pytest.raises(ValueError, match="unknown baseline"):
        evaluate(config(world, tmp_path / "out", baselines=["oracle"]))
    with pytest.raises(ValueError, match="dtype 'fp8'"):
        evaluate(config(world, tmp_path / "out", dtype="fp8"))
    with pytest.raises(ValueError, match="no model"):
        evaluate(config(world, tmp_path / "out", models={}))


def test_history_items_match_the_eval_set_builder(world, tmp_path):
    """Eval sets written by recbase.data.evalsets (two held-out positives, an interaction of an item without
    codes in the history): the baselines' history items reproduce every user's history tokens."""
    import pyarrow as pa

    from recbase.data.codes import read_codes
    from recbase.data.evalsets import EvalSetConfig, build_eval_set

    domain_dir = tmp_path / "data" / "books"
    domain_dir.mkdir(parents=True)
    items = pq.read_table(world["data_dir"] / "books" / "items.parquet")
    pq.write_table(items, domain_dir / "items.parquet")
    inter = pq.read_table(world["data_dir"] / "books" / "interactions.parquet").to_pylist()
    inter.insert(2, {"domain": "books", "user_id": inter[0]["user_id"], "item_id": "no-codes", "timestamp": 1})
    pq.write_table(pa.Table.from_pylist(inter), domain_dir / "interactions.parquet")
    eval_path = tmp_path / "shards" / "eval" / "books.parquet"
    build_eval_set(domain_dir, read_codes(world["codes"]), eval_path,
                   EvalSetConfig(positives=2, negatives_per_positive=3), seed=0)
    results = evaluate(config(world, tmp_path / "out", eval_dir=str(eval_path.parent), data_dir=str(tmp_path / "data"),
                              retrieval=False, baselines=["text_centred", "popularity"]))
    books = results["domains"]["books"]
    assert books["users"] == 12 and books["pairs"] == 12 * 8
    assert books["history_items_unverified"] == 0


def test_terminal_table_is_compact_and_charts_mark_bar_and_chance(world, tmp_path, capsys):
    from recbase.eval.report import chance_retrieval, reference_lines

    rc = main(["evaluate", "--model", f"zero_shot={world['model']}", "--model", f"finetuned={world['model2']}",
               f"eval_dir={world['eval_dir']}", f"data_dir={world['data_dir']}", f"codes={world['codes']}",
               f"embeddings_dir={world['embeddings_dir']}", f"out_dir={tmp_path}", "beam_width=8"])
    assert rc == 0
    out = capsys.readouterr().out
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    table = out[out.index("domain  "):].splitlines()
    assert table[0].split() == ["domain", "model", "AUC", "bar", "model", "−", "bar"]
    assert max(len(line) for line in table[:9]) <= 80
    books = metrics["domains"]["books"]
    bar = books["baselines"]["text_centred"]["auc"]
    row = table[1].split()
    assert row[:2] == ["books", "zero_shot"] and float(row[3]) == pytest.approx(bar, abs=1e-4)
    assert float(row[4]) == pytest.approx(books["models"]["zero_shot"]["auc"] - bar, abs=1e-4)
    fused = table[2].split()   # the adopted score under log P
    assert fused[:4] == ["books", "zero_shot:", "PMI", "+"]
    assert float(fused[-1]) == pytest.approx(books["models"]["zero_shot"]["auc_fused"] - bar, abs=1e-4)
    assert [r.split()[:2] for r in table[5:9:2]] == [["Overall", "zero_shot"], ["Overall", "finetuned"]]

    lines = reference_lines(metrics, "auc")
    assert lines == {"bar to clear: text sim (centred)": [bar, bar], "chance": [0.5, 0.5]}
    n = books["models"]["zero_shot"]["retrieval"]["catalog_items"]
    chance = reference_lines(metrics, "recall@10")["chance (random ranking of the catalog)"]
    assert chance == [pytest.approx(10 / n)] * 2
    assert chance_retrieval(40, [10])["mrr"] == pytest.approx(sum(1 / r for r in range(1, 41)) / 40)


def test_an_eval_set_without_tokenizer_hash_is_refused(world, tmp_path):
    path = write_eval_set(tmp_path / "eval" / "books.parquet", world["rows"])
    with pytest.raises(UserError, match=r"books.parquet: no tokenizer_hash in the Parquet metadata"):
        evaluate(config(world, tmp_path / "out", eval_dir=str(path.parent)))


def test_a_domain_the_model_was_trained_on_is_refused_or_labelled(world, tmp_path):
    seen = save_export(tiny_model(VOCAB), VOCAB, "tok-abc", tmp_path / "seen_model", train_domains=["books"],
                       tokenizer={"hash": "tok-abc", "train_domains": ["movies"]})
    cfg = config(world, tmp_path / "out", models={"zero_shot": str(seen)}, retrieval=False)
    with pytest.raises(UserError, match=r"domain 'books' is not zero-shot: model 'zero_shot' was pretrained on it "
                                        r"\(.*seen_model/recbase.json\).*allow_seen_domains=true"):
        evaluate(cfg)
    cfg.allow_seen_domains = True
    results = evaluate(cfg)
    assert results["domains"]["books"]["zero_shot"] is False
    assert results["model_train_domains"] == {"zero_shot": ["books"]}
    report = (tmp_path / "out" / "report.md").read_text()
    assert "**books is not zero-shot**: model 'zero_shot' was pretrained on it" in report
    tuned = save_export(tiny_model(VOCAB), VOCAB, "tok-abc", tmp_path / "tuned_model", train_domains=["books"],
                        train_config={"checkpoint": {"init_from": str(seen)}})
    results = evaluate(config(world, tmp_path / "out2", models={"tuned": str(tuned)}, retrieval=False))
    assert results["domains"]["books"]["zero_shot"] and results["domains"]["books"]["fine_tuned_on_it"] == ["tuned"]


def test_a_domain_the_tokenizer_was_trained_on_is_refused(world, tmp_path):
    import pyarrow.parquet as pq

    table = pq.read_table(world["eval_dir"] / "books.parquet")
    meta = {**table.schema.metadata, b"tokenizer_train_domains": b'["books", "movies"]'}
    path = tmp_path / "eval" / "books.parquet"
    path.parent.mkdir()
    pq.write_table(table.replace_schema_metadata(meta), path)
    with pytest.raises(UserError, match=r"'books' is not zero-shot: the tokenizer was trained on it"):
        evaluate(config(world, tmp_path / "out", eval_dir=str(path.parent)))
