"""The fused leave-one-out ranking on a tiny hand-built catalog: the candidate set is the union of the beam's items
and the text top, a fused score is log P + alpha * text worked out by hand, alpha 0 is the model's own ranking over
the union, a target outside the candidates is a miss, and bad fusion settings are one line naming the key."""
import numpy as np
import pytest

from eval_helpers import one_torch_thread  # noqa: F401  (autouse fixture)
from eval_helpers import tiny_model
from recbase.cli import main
from recbase.config import ConfigError
from recbase.eval.fusion import Setting, collect_candidates, fused_ranks, fused_scores, text_scores
from recbase.eval.leave_one_out import LeaveOneOutSet, history_tokens
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


@pytest.fixture(scope="module")
def fused():
    model = tiny_model(VOCAB, seed=5)
    retriever = Retriever(model, CodeTrie.build(CODES, ITEMS, VOCAB.codebook_size), VOCAB.n_special, VOCAB.bos_id,
                          beam_width=BEAM)
    scorer = CandidateScorer(model, VOCAB.levels, VOCAB.bos_id)
    loo = LeaveOneOutSet("tiny", "test", ["a", "b", "c"], HISTORIES, np.array([6, 10, 13]))
    tokens = VOCAB.encode_codes(CODES)
    cands = collect_candidates(retriever, scorer, loo, tokens, VOCAB, ITEMS, EMB, [0.0, 0.5], TEXT)
    exact = CandidateScorer(model, VOCAB.levels, VOCAB.bos_id, "naive")
    hist_tokens = history_tokens(HISTORIES, tokens, VOCAB)
    logp = {u: exact.score_user(hist_tokens[u], tokens).sum(1) for u in range(3)}   # every catalog item, by hand
    beams = [retriever.retrieve(h) for h in hist_tokens]
    return {"cands": cands, "loo": loo, "logp": logp, "beams": beams}


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
        beam = [int(i[1:]) for i in fused["beams"][u].items]
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
            beam = [int(i[1:]) for i in fused["beams"][u].items]
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
