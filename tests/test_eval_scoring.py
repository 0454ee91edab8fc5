"""Fast scoring (history once, candidates as masked branches) against one full forward per pair."""
import functools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from eval_helpers import one_torch_thread  # noqa: F401  (autouse fixture)
from eval_helpers import tiny_model
from recbase.eval.scoring import CandidateScorer, branch_mask, truncate_history
from recbase.vocab import Vocab

VOCAB = Vocab(levels=4, codebook_size=16)


def random_user(rng, n_items, n_cands, vocab=VOCAB):
    codes = rng.integers(0, vocab.codebook_size, size=(n_items + n_cands, vocab.levels))
    tokens = vocab.encode_codes(codes)
    history = np.r_[vocab.bos_id, tokens[:n_items].reshape(-1)]
    return history, tokens[n_items:]


@pytest.mark.parametrize("batch_size,batch_tokens", [(3, 0), (64, 0), (256, 4096), (256, 75)])
def test_fast_equals_naive(batch_size, batch_tokens):
    """batch_tokens=0: every user alone with its KV cache; 4096: all users in one batch; 75: two users in a
    padded batch, one alone, one too long for a batch (cached)."""
    model = tiny_model(VOCAB)
    rng = np.random.default_rng(0)
    users = [random_user(rng, n_items, 10) for n_items in (0, 1, 12, 3)]
    histories, cands = [u[0] for u in users], [u[1] for u in users]
    fast = CandidateScorer(model, VOCAB.levels, VOCAB.bos_id, "fast", batch_size, batch_tokens)
    naive = CandidateScorer(model, VOCAB.levels, VOCAB.bos_id, "naive")
    got, expected = fast.score_users(histories, cands), naive.score_users(histories, cands)
    for a, b in zip(got, expected):
        assert a.shape == (10, VOCAB.levels)
        np.testing.assert_allclose(a, b, atol=1e-4)
        assert np.ptp(a.sum(1)) > 1e-2  # candidates really get different scores
    assert fast.timing.pairs == 40 and fast.timing.users == 4


def test_log_probs_are_a_distribution_over_the_first_level():
    """Summed over every possible first token, P(first token | history) is 1: scores are real log-probs."""
    model = tiny_model(VOCAB)
    rng = np.random.default_rng(1)
    history, _ = random_user(rng, 5, 1)
    lo, hi = VOCAB.level_range(0)
    all_first = np.stack([np.r_[t, [VOCAB.level_range(level)[0] for level in range(1, VOCAB.levels)]]
                          for t in range(VOCAB.model_vocab_size)])
    logp = CandidateScorer(model, VOCAB.levels, VOCAB.bos_id).score_user(history, all_first)
    assert np.exp(logp[:, 0]).sum() == pytest.approx(1.0, abs=1e-4)
    assert (logp <= 0).all()


def test_long_history_truncated_keeps_bos_and_whole_items():
    history = np.r_[VOCAB.bos_id, np.arange(100, 140)]  # 10 items of 4 tokens
    cut = truncate_history(history, 4, VOCAB.bos_id, max_tokens=15)
    np.testing.assert_array_equal(cut, np.r_[VOCAB.bos_id, np.arange(128, 140)])
    assert truncate_history(history, 4, VOCAB.bos_id, max_tokens=41) is not None
    np.testing.assert_array_equal(truncate_history(history, 4, VOCAB.bos_id, 41), history)
    with pytest.raises(ValueError, match="cannot hold"):
        truncate_history(history, 4, VOCAB.bos_id, max_tokens=4)


def test_history_beyond_context_scores_like_its_truncation():
    model = tiny_model(VOCAB, max_positions=32)
    rng = np.random.default_rng(2)
    history, cands = random_user(rng, 20, 6)  # 81 tokens, context 32
    scorer = CandidateScorer(model, VOCAB.levels, VOCAB.bos_id, "fast", 4)
    short = truncate_history(history, VOCAB.levels, VOCAB.bos_id, 32 - (VOCAB.levels - 1))
    assert len(short) == 29 and short[0] == VOCAB.bos_id
    naive = CandidateScorer(model, VOCAB.levels, VOCAB.bos_id, "naive")
    np.testing.assert_allclose(scorer.score_user(history, cands), naive.score_user(short, cands), atol=1e-4)


def test_branch_mask_lets_each_branch_see_prefix_and_its_own_past():
    allowed = branch_mask(2, 3, 4, torch.float32, torch.device("cpu"))[0, 0] == 0
    assert allowed.shape == (6, 10)
    assert allowed[:, :4].all()
    expected = torch.tensor([[1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0],
                             [0, 0, 0, 1, 0, 0], [0, 0, 0, 1, 1, 0], [0, 0, 0, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(allowed[:, 4:], expected)


def test_bad_candidate_shape_is_refused():
    scorer = CandidateScorer(tiny_model(VOCAB), VOCAB.levels, VOCAB.bos_id)
    with pytest.raises(ValueError, match=r"expected \[C, 4\]"):
        scorer.score_user(np.array([VOCAB.bos_id]), np.zeros((3, 2), dtype=np.int64))
    with pytest.raises(ValueError, match="scoring mode"):
        CandidateScorer(scorer.model, VOCAB.levels, VOCAB.bos_id, mode="slow")


@functools.lru_cache(maxsize=None)
def model_with_levels(levels: int):
    return tiny_model(Vocab(levels=levels, codebook_size=8), seed=levels)


@settings(max_examples=10, deadline=None)
@given(levels=st.integers(1, 5), n_items=st.lists(st.integers(0, 6), min_size=1, max_size=3),
       n_cands=st.integers(1, 7), batch_size=st.integers(1, 8), batch_tokens=st.sampled_from([0, 40, 4096]))
def test_fast_equals_naive_on_varied_shapes(levels, n_items, n_cands, batch_size, batch_tokens):
    vocab = Vocab(levels=levels, codebook_size=8)
    model = model_with_levels(levels)
    rng = np.random.default_rng(levels * 100 + sum(n_items))
    users = [random_user(rng, n, n_cands, vocab) for n in n_items]
    histories, cands = [u[0] for u in users], [u[1] for u in users]
    fast = CandidateScorer(model, levels, vocab.bos_id, "fast", batch_size, batch_tokens).score_users(histories, cands)
    naive = CandidateScorer(model, levels, vocab.bos_id, "naive").score_users(histories, cands)
    for a, b in zip(fast, naive):
        np.testing.assert_allclose(a, b, atol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fast_bf16_on_gpu_tracks_float32_reference():
    """bf16 on the GPU (the evaluator's default there) against the float32 naive reference on the CPU."""
    model = tiny_model(VOCAB)
    rng = np.random.default_rng(4)
    users = [random_user(rng, n, 12) for n in (3, 20, 40)]
    histories, cands = [u[0] for u in users], [u[1] for u in users]
    expected = CandidateScorer(model, VOCAB.levels, VOCAB.bos_id, "naive").score_users(histories, cands)
    gpu_model = tiny_model(VOCAB).to("cuda", torch.bfloat16)
    for batch_tokens in (0, 4096):
        got = CandidateScorer(gpu_model, VOCAB.levels, VOCAB.bos_id, "fast", 5, batch_tokens).score_users(
            histories, cands)
        for a, b in zip(got, expected):
            np.testing.assert_allclose(a.sum(1), b.sum(1), rtol=0.05, atol=0.5)
