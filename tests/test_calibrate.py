"""Scores that know the new catalog (recbase.eval.calibrate): trie normalisation, catalog PMI, level weights, and
what evaluation does with a catalog that does not hold its candidates."""
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from eval_helpers import one_torch_thread  # noqa: F401  (autouse fixture)
from eval_helpers import build_world, tiny_model
from recbase.errors import UserError
from recbase.eval.calibrate import (CatalogTokens, catalog_scores, empty_history_logprobs, level_score,
                                    level_weights, sample_catalog)
from recbase.eval.job import EvalConfig, evaluate
from recbase.eval.metrics import auc
from recbase.eval.scoring import CandidateScorer
from recbase.eval.trie import CodeTrie
from recbase.vocab import Vocab

VOCAB = Vocab(levels=3, codebook_size=8)


def catalog(n_items: int, seed: int = 0) -> np.ndarray:
    """``n_items`` distinct code tuples, many sharing prefixes (first codes from a small set)."""
    rng = np.random.default_rng(seed)
    tuples = set()
    while len(tuples) < n_items:
        tuples.add((int(rng.integers(0, 3)), int(rng.integers(0, 4)), int(rng.integers(0, 8))))
    return np.array(sorted(tuples))


def history(n_items: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.r_[VOCAB.bos_id, VOCAB.encode_codes(rng.integers(0, 8, size=(n_items, 3))).reshape(-1)]


@pytest.mark.parametrize("mode,batch_size", [("fast", 256), ("fast", 5), ("naive", 256)])
def test_trie_normalised_probabilities_of_the_catalog_sum_to_one(mode, batch_size):
    codes = catalog(30)
    model = tiny_model(VOCAB)
    allowed = CatalogTokens(CodeTrie.build(codes, [f"i{i}" for i in range(len(codes))], 8), VOCAB)
    scorer = CandidateScorer(model, VOCAB.levels, VOCAB.bos_id, mode, batch_size, pad_id=VOCAB.pad_id)
    hists = [history(4, 1), history(1, 2), np.array([VOCAB.bos_id])]
    scored = scorer.score_users(hists, [VOCAB.encode_codes(codes)] * len(hists), allowed)
    for s in scored:
        assert s.shape == (len(codes), 3, 2)
        assert np.exp(level_score(s, np.ones(3), trie=True)).sum() == pytest.approx(1.0, abs=1e-5)
        assert np.exp(level_score(s, np.ones(3), trie=False)).sum() < 0.99   # the vocabulary is wider
    plain = scorer.score_users(hists, [VOCAB.encode_codes(codes)] * len(hists))
    for s, p in zip(scored, plain):
        np.testing.assert_allclose(s[..., 0], p, atol=1e-5)   # log P itself is what it was without the trie


def test_trie_normalised_log_p_equals_a_hand_computed_value():
    codes = np.array([[0, 1, 2], [0, 3, 1], [2, 1, 1]])
    model = tiny_model(VOCAB, seed=3)
    allowed = CatalogTokens(CodeTrie.build(codes, ["a", "b", "c"], 8), VOCAB)
    hist = history(3, 5)
    tokens = VOCAB.encode_codes(codes)
    scored = CandidateScorer(model, VOCAB.levels, VOCAB.bos_id, pad_id=VOCAB.pad_id).score_user(hist, tokens, allowed)

    def probs(prefix):   # the model's next-token distribution after the history and a prefix of tokens
        with torch.no_grad():
            logits = model(input_ids=torch.as_tensor(np.r_[hist, prefix], dtype=torch.int64)[None]).logits[0, -1]
        return torch.softmax(logits.double(), -1).numpy()

    p0, pa_, pb = probs([]), probs(tokens[0, :1]), probs(tokens[0, :2])
    tok = lambda level, code: VOCAB.level_range(level)[0] + code  # noqa: E731
    # item a = (0, 1, 2): level 0 among the catalog's first codes {0, 2}, level 1 among {1, 3} after 0, level 2
    # the only code after (0, 1)
    expected = (np.log(p0[tok(0, 0)] / (p0[tok(0, 0)] + p0[tok(0, 2)]))
                + np.log(pa_[tok(1, 1)] / (pa_[tok(1, 1)] + pa_[tok(1, 3)])) + 0.0)
    assert level_score(scored[0], np.ones(3), trie=True) == pytest.approx(expected, abs=1e-5)
    assert scored[0, 2, 0] == pytest.approx(np.log(pb[tok(2, 2)]), abs=1e-5)   # log P over the vocabulary
    # item c = (2, 1, 1) is alone after its first code: only the first level counts
    assert level_score(scored[2], np.ones(3), trie=True) == pytest.approx(
        np.log(p0[tok(0, 2)] / (p0[tok(0, 0)] + p0[tok(0, 2)])), abs=1e-5)
    np.testing.assert_allclose(level_weights("decay", 3), [1.0, 0.5, 0.25])
    np.testing.assert_allclose(level_score(scored, level_weights("first", 3), trie=True),
                               scored[:, 0, 0] - scored[:, 0, 1])


def test_catalog_pmi_equals_log_p_minus_log_of_the_other_users_mean_p():
    codes = catalog(12, seed=1)
    model = tiny_model(VOCAB, seed=2)
    allowed = CatalogTokens(CodeTrie.build(codes, [f"i{i}" for i in range(len(codes))], 8), VOCAB)
    tokens = VOCAB.encode_codes(codes)
    hists = [history(n, seed) for seed, n in enumerate([2, 3, 1, 4, 2])]
    cands = [tokens[[0, 3, 5]], tokens[[1, 3, 7]], tokens[[2, 0, 11]], tokens[[4, 6, 8]], tokens[[9, 10, 3]]]
    scorer = CandidateScorer(model, VOCAB.levels, VOCAB.bos_id, pad_id=VOCAB.pad_id)
    scored = scorer.score_users(hists, cands, allowed)
    prior = empty_history_logprobs(scorer, VOCAB.bos_id, cands, allowed)
    naive = CandidateScorer(model, VOCAB.levels, VOCAB.bos_id, "naive")
    every = [naive.score_user(h, tokens) for h in hists]   # log P per level of every item after every history
    # every user sampled: each user's prior is the mean over the four others
    got = catalog_scores(scored, prior, sample_catalog(scorer, hists, cands, allowed, 5, 0), VOCAB.levels)
    for u, user_cands in enumerate([[0, 3, 5], [1, 3, 7], [2, 0, 11], [4, 6, 8], [9, 10, 3]]):
        p_others = np.mean([np.exp(every[v][user_cands].sum(1)) for v in range(5) if v != u], axis=0)
        np.testing.assert_allclose(got["cpmi"][u], every[u][user_cands].sum(1) - np.log(p_others), atol=1e-5)
        first = np.mean([np.exp(every[v][user_cands, 0]) for v in range(5) if v != u], axis=0)
        assert not np.allclose(got["cpmi_trie_first"][u], every[u][user_cands, 0] - np.log(first))  # trie-normalised
    # a sample of two: users outside it use both, users inside it the other one alone
    sample = sample_catalog(scorer, hists, cands, allowed, 2, 0)
    rows = np.flatnonzero(sample.sample_row >= 0)
    got = catalog_scores(scored, prior, sample, VOCAB.levels)["cpmi"]
    for u, user_cands in enumerate([[0, 3, 5], [1, 3, 7], [2, 0, 11], [4, 6, 8], [9, 10, 3]]):
        others = [v for v in rows if v != u]
        p_others = np.mean([np.exp(every[v][user_cands].sum(1)) for v in others], axis=0)
        np.testing.assert_allclose(got[u], every[u][user_cands].sum(1) - np.log(p_others), atol=1e-5)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("world"), VOCAB)


def config(world, out, **kw) -> EvalConfig:
    fields = dict(models={"zero_shot": str(world["model"])}, eval_dir=str(world["eval_dir"]),
                  data_dir=str(world["data_dir"]), embeddings_dir=str(world["embeddings_dir"]),
                  codes=str(world["codes"]), out_dir=str(out), retrieval=False)
    return EvalConfig(**{**fields, **kw})


def test_evaluate_reports_every_catalog_score_and_writes_it_per_pair(world, tmp_path):
    results = evaluate(config(world, tmp_path / "out", catalog_users=5))
    books = results["domains"]["books"]["models"]["zero_shot"]
    pairs = pq.read_table(tmp_path / "out" / "pairs" / "books.parquet").to_pandas()
    for name in ("trie", "trie_decay", "trie_pmi", "cpmi", "cpmi_trie", "cpmi_trie_first", "cpmi_trie_decay"):
        assert books[f"auc_{name}"] == pytest.approx(auc(pairs[f"zero_shot/{name}"].to_numpy(),
                                                         pairs["label"].to_numpy()))
    off = evaluate(config(world, tmp_path / "off", catalog_users=0))["domains"]["books"]["models"]["zero_shot"]
    assert "auc_trie" in off and "auc_cpmi" not in off and off["auc_trie"] == books["auc_trie"]
    # the report explains the catalog PMI only where it was computed
    assert "histories h of a sample of 5 eval users" in (tmp_path / "out" / "report.md").read_text()
    assert "*catalog PMI*" not in (tmp_path / "off" / "report.md").read_text()
    mass = np.stack([pairs[f"zero_shot/mass_{lvl}"] for lvl in range(3)], 1)
    logp = np.stack([pairs[f"zero_shot/logp_{lvl}"] for lvl in range(3)], 1)
    np.testing.assert_allclose(pairs["zero_shot/trie"], (logp - mass).sum(1), atol=1e-9)
    assert (mass <= 1e-9).all() and (mass[:, 0] < -1e-3).all()   # the catalog uses part of the vocabulary


def write_codes(world, path, codes, items):
    table = pa.table({"domain": ["books"] * len(items), "item_id": items,
                      "codes": pa.array(codes.tolist(), pa.list_(pa.int32()))})
    pq.write_table(table.replace_schema_metadata(pq.read_schema(world["codes"]).metadata), path)
    return path


def test_a_catalog_without_the_candidates_gives_one_clear_error(world, tmp_path):
    codes, items = world["codes_array"], world["items"]
    candidate = world["rows"][0]["candidates"][0]
    damaged = codes.copy()
    damaged[items.index(candidate)] = (damaged[items.index(candidate)] + 1) % 8
    path = write_codes(world, tmp_path / "damaged.parquet", damaged, items)
    with pytest.raises(UserError, match=r"books\.parquet: row 0, field 'candidate_tokens': item '"
                                        + candidate + r"' has tokens .* the catalog .*damaged\.parquet gives"):
        evaluate(config(world, tmp_path / "out", codes=str(path)))
    keep = [i for i, item in enumerate(items) if item != candidate]
    path = write_codes(world, tmp_path / "missing.parquet", codes[keep], [items[i] for i in keep])
    with pytest.raises(UserError, match=r"row 0, field 'candidates': item '" + candidate + "' is not in the 'books' "
                                        r"catalog of .*missing\.parquet"):
        evaluate(config(world, tmp_path / "out", codes=str(path)))
    table = pa.table({"domain": ["news"], "item_id": ["n0"], "codes": pa.array([[0, 0, 0]], pa.list_(pa.int32()))})
    pq.write_table(table.replace_schema_metadata(pq.read_schema(world["codes"]).metadata), tmp_path / "other.parquet")
    with pytest.raises(UserError, match=r"other\.parquet: no items of domain 'books'"):
        evaluate(config(world, tmp_path / "out", codes=str(tmp_path / "other.parquet")))
