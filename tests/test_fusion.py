"""The fused leave-one-out ranking on a tiny hand-built catalog: the candidate set is the union of the beam's items
and the text top, a fused score is log P + alpha * text worked out by hand, alpha 0 is the model's own ranking over
the union, a target outside the candidates is a miss, and bad fusion settings are one line naming the key.
An ensemble of two models: its candidates are the union of both beams and the text top, a candidate's log P is the
mean of the two models' by hand, and an ensemble of one model twice ranks exactly as that model alone."""
import numpy as np
import pytest

from eval_helpers import one_torch_thread  # noqa: F401  (autouse fixture)
from eval_helpers import tiny_model
from recbase.cli import main
from recbase.config import ConfigError
from recbase.eval.fusion import (Setting, collect_candidates, fused_ranks, fused_scores, generative_ranks,
                                 text_scores)
from recbase.eval.leave_one_out import LeaveOneOutSet, history_tokens, search_beams
from recbase.eval.retrieval import Retriever
from recbase.eval.scoring import CandidateScorer
from recbase.eval.trie import CodeTrie
from recbase.indomain import InDomainConfig
from recbase.vocab import Vocab

VOCAB = Vocab(levels=2, codebook_size=4)
CODES = np.array([[a, b] for a in range(4) for b in range(4)])[:14]   # 14 items, each its own tuple
ITEMS = [f"i{j}" for j in range(len(CODES))]
# item j's title embedding: a point on a circle, so the cosine falls with the distance along the catalog
EMB = np.stack([np.cos(np.arange(14) * 0.4), np.sin(np.arange(14) * 0.4), np.full(14, 0.3)], 1).astype(np.float32)
HISTORIES = [np.array([0, 3, 5]), np.array([9]), np.array([12, 2, 7, 11])]
BEAM, TEXT = 3, 2


LOO = LeaveOneOutSet("tiny", "test", ["a", "b", "c"], HISTORIES, np.array([6, 10, 13]))
TOKENS = VOCAB.encode_codes(CODES)


def _model(seed: int):
    """A tiny random model as (retriever, scorer), with its exact log P of every catalog item per user and its beams."""
    model = tiny_model(VOCAB, seed=seed)
    retriever = Retriever(model, CodeTrie.build(CODES, ITEMS, VOCAB.codebook_size), VOCAB.n_special, VOCAB.bos_id,
                          beam_width=BEAM)
    exact = CandidateScorer(model, VOCAB.levels, VOCAB.bos_id, "naive")
    hist_tokens = history_tokens(HISTORIES, TOKENS, VOCAB)
    logp = {u: exact.score_user(hist_tokens[u], TOKENS).sum(1) for u in range(3)}   # every catalog item, by hand
    beams = [[int(i[1:]) for i in retriever.retrieve(h).items] for h in hist_tokens]
    return (retriever, CandidateScorer(model, VOCAB.levels, VOCAB.bos_id)), logp, beams


def _collect(models):
    searched = [(search_beams(retriever, LOO, TOKENS, VOCAB), scorer) for retriever, scorer in models]
    return collect_candidates(searched, LOO, TOKENS, VOCAB, ITEMS, EMB, [0.0, 0.5], TEXT)


@pytest.fixture(scope="module")
def fused():
    model, logp, beams = _model(5)
    return {"cands": _collect([model]), "loo": LOO, "logp": logp, "beams": beams, "model": model}


@pytest.fixture(scope="module")
def ensemble(fused):
    other, logp, beams = _model(11)
    # two models that disagree, so the union is more than either beam
    assert any(set(a) != set(b) for a, b in zip(beams, fused["beams"]))
    return {"cands": _collect([fused["model"], other]), "logp": logp, "beams": beams}


def _cosine(a, b):
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def _text_by_hand(user: int, decay: float) -> np.ndarray:
    """Cosine of every item with sum_j decay**j * (j-th most recent history item's unit embedding); history -1."""
    h = HISTORIES[user]
    unit = EMB / np.linalg.norm(EMB, axis=1, keepdims=True)
    profile = sum(decay ** j * unit[item] for j, item in enumerate(h[::-1]))
    out = np.array([_cosine(profile, e) for e in EMB])
    out[h] = -1.0
    return out


def _members(cands, user: int, decay: float) -> list[int]:
    mask = cands.candidate_mask(decay)[user]
    return cands.rows[user][mask].tolist()


def test_candidates_are_the_beams_items_then_the_text_top(fused):
    cands = fused["cands"]
    for u in range(3):
        beam = fused["beams"][u]
        assert cands.rows[u, :cands.n_beam[u]].tolist() == beam
        for decay in (0.0, 0.5):
            text = _text_by_hand(u, decay)
            top = [int(j) for j in np.argsort(-text, kind="stable")[:TEXT]]
            assert not set(top) & set(HISTORIES[u].tolist())   # history items are never text candidates
            members = _members(cands, u, decay)
            assert sorted(members) == sorted(set(beam) | set(top)) and len(members) == len(set(members))
    assert cands.pairs == sum(int((r >= 0).sum()) for r in cands.rows) - int(cands.n_beam.sum())
    # the two profiles differ for a user with several history items: one collection serves both decays
    assert _members(cands, 2, 0.0) != _members(cands, 2, 0.5)


def test_text_score_is_the_decayed_profile_cosine():
    for u in range(3):
        for decay in (0.0, 0.5, 0.9):
            np.testing.assert_allclose(text_scores(EMB / np.linalg.norm(EMB, axis=1, keepdims=True),
                                                   [HISTORIES[u]], decay)[0], _text_by_hand(u, decay), atol=1e-5)


def test_fused_score_is_log_p_plus_alpha_times_text_by_hand(fused):
    cands = fused["cands"]
    for decay in (0.0, 0.5):
        for u in range(3):
            members = np.array(_members(cands, u, decay))
            logp, text = fused["logp"][u][members], _text_by_hand(u, decay)[members]
            got = fused_scores(cands, Setting(decay, "raw", 3.0))[u]
            np.testing.assert_allclose(got[np.isfinite(got)], logp + 3.0 * text, atol=1e-4)
            z = lambda x: (x - x.mean()) / x.std()   # noqa: E731  (population std, over the user's candidates)
            got = fused_scores(cands, Setting(decay, "z", 0.7))[u]
            np.testing.assert_allclose(got[np.isfinite(got)], z(logp) + 0.7 * z(text), atol=1e-4)


def test_alpha_zero_is_the_models_ranking_over_the_union(fused):
    cands = fused["cands"]
    for decay in (0.0, 0.5):
        for u in range(3):
            members = _members(cands, u, decay)
            by_logp = [members[i] for i in np.argsort(-fused["logp"][u][members], kind="stable")]
            ranks = [fused_ranks(cands, np.array([m if v == u else -1 for v in range(3)]),
                                 Setting(decay, "raw", 0.0))[u] for m in members]
            assert [members[i] for i in np.argsort(ranks)] == by_logp
            # the beam's items keep the beam's order among themselves
            beam = fused["beams"][u]
            assert [m for m in by_logp if m in beam] == beam


def test_a_target_outside_the_candidates_is_a_miss(fused):
    cands, loo = fused["cands"], fused["loo"]
    for decay in (0.0, 0.5):
        for alpha in (0.0, 5.0):
            ranks = fused_ranks(cands, loo.targets, Setting(decay, "raw", alpha))
            for u, t in enumerate(loo.targets.tolist()):
                assert np.isfinite(ranks[u]) == (t in _members(cands, u, decay))
    # an item in one decay's text top only is a miss under the other decay
    u = 2
    only = sorted(set(_members(cands, u, 0.5)) - set(_members(cands, u, 0.0)))[0]
    targets = np.array([-1, -1, only])
    assert np.isinf(fused_ranks(cands, targets, Setting(0.0, "raw", 1.0))[u])
    assert np.isfinite(fused_ranks(cands, targets, Setting(0.5, "raw", 1.0))[u])
    # a history item is never a text candidate, under either decay
    for u, h in enumerate(HISTORIES):
        for decay in (0.0, 0.5):
            assert not np.isin(cands.rows[u][cands.text_top[decay][u]], h).any()


def test_generative_ranks_of_one_model_are_the_beams_own(fused):
    cands = fused["cands"]
    for target in range(len(ITEMS)):
        ranks = generative_ranks(cands, np.full(3, target))
        expected = [fused["beams"][u].index(target) + 1 if target in fused["beams"][u] else np.inf for u in range(3)]
        assert ranks.tolist() == expected


def test_ensemble_candidates_are_the_union_of_the_beams_and_the_text_top(fused, ensemble):
    cands = ensemble["cands"]
    for u in range(3):
        first, second = fused["beams"][u], ensemble["beams"][u]
        union = first + [i for i in second if i not in first]
        assert cands.rows[u, :cands.n_beam[u]].tolist() == union
        for decay in (0.0, 0.5):
            top = [int(j) for j in np.argsort(-_text_by_hand(u, decay), kind="stable")[:TEXT]]
            members = _members(cands, u, decay)
            assert sorted(members) == sorted(set(union) | set(top)) and len(members) == len(set(members))
    # each model teacher-forces the candidates its own beam did not return, the other model's beam items included
    assert cands.pairs == sum(int((r >= 0).sum()) - len(b) for beams in (fused["beams"], ensemble["beams"])
                              for r, b in zip(cands.rows, beams))


def test_ensemble_log_p_is_the_mean_of_the_models_by_hand(fused, ensemble):
    cands = ensemble["cands"]
    for u in range(3):
        rows = cands.rows[u][cands.rows[u] >= 0]
        by_hand = (fused["logp"][u][rows] + ensemble["logp"][u][rows]) / 2
        np.testing.assert_allclose(cands.logp[u, :len(rows)], by_hand, atol=1e-4)
    for setting in (Setting(0.0, "z", 1.0), Setting(0.5, "raw", 3.0)):
        for u in range(3):
            members = np.array(_members(cands, u, setting.decay))
            logp = (fused["logp"][u][members] + ensemble["logp"][u][members]) / 2
            text = _text_by_hand(u, setting.decay)[members]
            if setting.scale == "z":
                logp, text = (logp - logp.mean()) / logp.std(), (text - text.mean()) / text.std()
            got = fused_scores(cands, setting)[u]
            np.testing.assert_allclose(got[np.isfinite(got)], logp + setting.alpha * text, atol=1e-4)
    # generative only: the union of the beams ranked by the mean log P
    for u in range(3):
        beam = cands.rows[u, :cands.n_beam[u]]
        mean = (fused["logp"][u][beam] + ensemble["logp"][u][beam]) / 2
        best = int(beam[np.argmax(mean)])
        assert generative_ranks(cands, np.array([best if v == u else -1 for v in range(3)]))[u] == 1


def test_an_ensemble_of_one_model_twice_is_that_model_exactly(fused):
    alone, twice = fused["cands"], _collect([fused["model"], fused["model"]])
    np.testing.assert_array_equal(twice.rows, alone.rows)
    np.testing.assert_array_equal(twice.logp, alone.logp)
    for setting in (Setting(0.0, "z", 1.0), Setting(0.5, "raw", 3.0), Setting(0.0, "raw", 0.0)):
        np.testing.assert_array_equal(fused_ranks(twice, LOO.targets, setting),
                                      fused_ranks(alone, LOO.targets, setting))
    np.testing.assert_array_equal(generative_ranks(twice, LOO.targets), generative_ranks(alone, LOO.targets))


@pytest.mark.parametrize("overrides, message", [
    (["ensemble=true"], "ensemble=true needs at least two seeds (models to average), got seeds=[0]"),
    (["ensemble=true", "seeds=[0,1]", "fusion=false"], "ensemble=true ranks the fusion's candidates with every model"),
    (["seeds=[1,1]"], "seeds=[1, 1] repeats a seed"),
])
def test_bad_ensemble_settings_are_one_line(overrides, message, tmp_path, capsys):
    assert main(["indomain", f"out={tmp_path / 'out'}", *overrides]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: " + message) and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("override, message", [
    ("fusion_scales=[\"log\"]", "fusion_scales: 'log' is not raw | z"),
    ("fusion_decays=[1.5]", "fusion_decays: 1.5 is outside the allowed range [0, 1]"),
    ("fusion_alphas=[]", "fusion_alphas is empty"),
    ("fusion_alphas=[-1]", "fusion_alphas: -1.0 is outside the allowed range >= 0"),
    ("fusion_text_items=-5", "fusion_text_items=-5 is outside the allowed range >= 0"),
])
def test_bad_fusion_settings_are_one_line_naming_the_key(override, message, tmp_path, capsys):
    assert main(["indomain", "fusion=true", f"out={tmp_path / 'out'}", override]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: " + message) and err.count("\n") == 1
    assert not (tmp_path / "out").exists()   # refused before anything was written
    with pytest.raises(ConfigError):
        InDomainConfig(fusion=True, fusion_scales=[], fusion_decays=[0.0]).validate()
