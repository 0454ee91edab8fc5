"""Prefix trie and catalog-constrained beam search."""
import numpy as np
import pytest
import torch

from eval_helpers import one_torch_thread  # noqa: F401  (autouse fixture)
from eval_helpers import tiny_model
from recbase.eval.retrieval import Retriever, beam_search, select_beams
from recbase.eval.scoring import CandidateScorer
from recbase.eval.trie import CodeTrie
from recbase.vocab import Vocab


def test_trie_masks_match_brute_force_prefix_sets():
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 5, size=(60, 3))
    trie = CodeTrie.build(codes, [f"i{j}" for j in range(60)], codebook_size=5)
    tuples = {tuple(c) for c in codes.tolist()}
    assert trie.n_tuples == len(tuples)
    for depth in range(3):
        prefixes = sorted({t[:depth] for t in tuples})
        assert len(trie.prefix_keys[depth]) == len(prefixes)
        mask = trie.allowed_mask(depth, torch.arange(len(prefixes)))
        for row, prefix in enumerate(prefixes):  # prefixes are sorted like the trie's keys
            expected = {t[depth] for t in tuples if t[:depth] == prefix}
            assert set(torch.nonzero(mask[row])[:, 0].tolist()) == expected
    decoded = {tuple(c) for c in trie.tuple_codes(torch.arange(trie.n_tuples)).tolist()}
    assert decoded == tuples


def test_colliding_items_share_a_tuple():
    codes = np.array([[1, 2], [0, 3], [1, 2]])
    trie = CodeTrie.build(codes, ["a", "b", "c"], codebook_size=4)
    assert trie.n_tuples == 2
    assert trie.items_of(1) == ["a", "c"] and trie.items_of(0) == ["b"]


def test_trie_rejects_bad_codes():
    with pytest.raises(ValueError, match="outside"):
        CodeTrie.build(np.array([[0, 4]]), ["a"], codebook_size=4)
    with pytest.raises(ValueError, match="do not match"):
        CodeTrie.build(np.array([[0, 1]]), ["a", "b"], codebook_size=4)


def test_exhaustive_beam_ranks_every_tuple_by_exact_log_prob():
    """With a beam at least as wide as the catalog nothing is pruned: the result is the brute-force ranking."""
    vocab = Vocab(levels=3, codebook_size=6)
    model = tiny_model(vocab, seed=3)
    rng = np.random.default_rng(3)
    codes = rng.integers(0, 6, size=(25, 3))
    items = [f"i{j}" for j in range(25)]
    trie = CodeTrie.build(codes, items, vocab.codebook_size)
    history = np.r_[vocab.bos_id, vocab.encode_codes(rng.integers(0, 6, size=(4, 3))).reshape(-1)]
    tuples, scores = beam_search(model, torch.as_tensor(history), trie, vocab.n_special, beam_width=trie.n_tuples)
    assert len(tuples) == trie.n_tuples
    tuple_codes = trie.tuple_codes(tuples).numpy()
    exact = CandidateScorer(model, 3, vocab.bos_id, "naive").score_user(history, vocab.encode_codes(tuple_codes))
    np.testing.assert_allclose(scores.numpy(), exact.sum(1), atol=1e-4)
    assert (np.diff(scores.numpy()) <= 1e-6).all()
    # A narrower beam returns catalog items only, each with its tuple's exact score.
    exact_of_item = {item: float(s) for t, s in zip(tuples.tolist(), scores) for item in trie.items_of(t)}
    got = Retriever(model, trie, vocab.n_special, vocab.bos_id, beam_width=4).retrieve(history)
    assert set(got.items) <= set(items)
    assert len(got.items) >= 4
    np.testing.assert_allclose(got.scores, [exact_of_item[i] for i in got.items], atol=1e-4)


def bigram_model(vocab: Vocab, logits: dict[tuple[int, int], float]):
    """A real Qwen2 whose next-token logits depend only on the current token: ``logits[(cur, nxt)]``.

    Attention and MLP outputs are zeroed, so the residual stream is the current token's embedding, a one-hot
    vector; after RMSNorm it is sqrt(hidden) times that one-hot, and the LM head row of ``nxt`` reads the logit.
    """
    model = tiny_model(vocab, hidden=32)
    hidden = model.config.hidden_size
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.zero_()
        model.model.embed_tokens.weight[:hidden, :hidden] = torch.eye(hidden)
        model.lm_head.weight.zero_()
        for (cur, nxt), value in logits.items():
            model.lm_head.weight[nxt, cur] = value / hidden ** 0.5
    return model


def test_beam_finds_hand_built_top_item_that_greedy_misses():
    vocab = Vocab(levels=3, codebook_size=4)
    tok = lambda level, code: vocab.n_special + level * vocab.codebook_size + code  # noqa: E731
    items = ["A", "B", "C", "D", "E", "F"]
    codes = np.array([[0, 0, 0], [0, 1, 2], [1, 2, 3], [1, 2, 3], [2, 0, 1], [3, 3, 3]])
    model = bigram_model(vocab, {
        (vocab.bos_id, tok(0, 0)): 6.0, (vocab.bos_id, tok(0, 1)): 4.0,   # greedy starts with code 0 ...
        (tok(0, 0), tok(1, 3)): 12.0, (tok(1, 3), tok(2, 0)): 12.0,       # ... whose best child (0, 3) is no item
        (tok(0, 0), tok(1, 0)): -3.0, (tok(0, 0), tok(1, 1)): -3.0,
        (tok(0, 1), tok(1, 2)): 8.0, (tok(1, 2), tok(2, 3)): 8.0,         # (1, 2, 3) is the best real tuple
    })
    trie = CodeTrie.build(codes, items, vocab.codebook_size)
    history = np.array([vocab.bos_id])
    exact = CandidateScorer(model, 3, vocab.bos_id).score_user(history, vocab.encode_codes(codes)).sum(1)
    assert exact[2] == exact[3] == exact.max()
    unconstrained = CandidateScorer(model, 3, vocab.bos_id).score_user(
        history, np.array([[tok(0, 0), tok(1, 3), tok(2, 0)]])).sum()
    assert unconstrained > exact.max()  # the model prefers a tuple outside the catalog

    got = Retriever(model, trie, vocab.n_special, vocab.bos_id, beam_width=2).retrieve(history)
    assert got.items[:2] == ["C", "D"]                      # colliding items, listed in catalog order
    assert got.scores[0] == got.scores[1] == pytest.approx(exact[2], abs=1e-4)
    assert got.rank_of("C") == 1 and got.rank_of("F") == float("inf")
    assert set(got.items) <= set(items)
    greedy = Retriever(model, trie, vocab.n_special, vocab.bos_id, beam_width=1).retrieve(history)
    assert greedy.items[0] in ("A", "B")


def assert_same_retrieval(batched, single, atol=1e-5):
    assert len(batched) == len(single)
    for b, s in zip(batched, single):
        assert b.items == s.items
        np.testing.assert_allclose(b.scores, s.scores, atol=atol, rtol=0)


@pytest.mark.parametrize("levels,codebook,n_items,beam_width", [(3, 6, 25, 30), (4, 8, 300, 5), (4, 8, 300, 1)])
def test_batched_retrieval_equals_single_user(levels, codebook, n_items, beam_width):
    """Users of different lengths (bos alone, short, truncated to the context) padded into shared forwards return
    the single-user items, order and scores. A beam wider than the catalog leaves slots dead at every level."""
    vocab = Vocab(levels=levels, codebook_size=codebook)
    model = tiny_model(vocab, seed=levels + beam_width)
    rng = np.random.default_rng(levels + n_items)
    codes = rng.integers(0, codebook, size=(n_items, levels))
    items = [f"i{j}" for j in range(n_items)]
    trie = CodeTrie.build(codes, items, vocab.codebook_size)
    n_hist = [0, 1, 4, 9, 2, 14, 3, 30, 6]   # 30 items exceed the 64-token context: the history is truncated
    histories = [np.r_[vocab.bos_id, vocab.encode_codes(codes[rng.integers(0, n_items, size=n)]).reshape(-1)]
                 for n in n_hist]
    retriever = Retriever(model, trie, vocab.n_special, vocab.bos_id, beam_width, max_context=64, batch_users=4,
                          pad_id=vocab.pad_id)
    single = [retriever.retrieve(h) for h in histories]
    batched = retriever.retrieve_batch(histories)
    assert_same_retrieval(batched, single)
    for got in batched:
        assert set(got.items) <= set(items) and len(got.items) >= min(beam_width, trie.n_tuples)


def test_batched_retrieval_stays_in_catalog_and_breaks_ties_like_single_user():
    """The hand-built model prefers a tuple outside the catalog and leaves most logits exactly equal: the batched
    search returns catalog items only and resolves every tie as the single-user search does."""
    vocab = Vocab(levels=3, codebook_size=4)
    tok = lambda level, code: vocab.n_special + level * vocab.codebook_size + code  # noqa: E731
    items = ["A", "B", "C", "D", "E", "F", "G"]
    codes = np.array([[0, 0, 0], [0, 1, 2], [1, 2, 3], [1, 2, 3], [2, 0, 1], [3, 3, 3], [2, 0, 2]])
    model = bigram_model(vocab, {
        (vocab.bos_id, tok(0, 0)): 6.0, (vocab.bos_id, tok(0, 1)): 4.0,
        (tok(0, 0), tok(1, 3)): 12.0, (tok(1, 3), tok(2, 0)): 12.0,       # (0, 3, 0) is no item
        (tok(0, 1), tok(1, 2)): 8.0, (tok(1, 2), tok(2, 3)): 8.0,
        (tok(2, 3), tok(0, 2)): 12.0,                                     # after item C, level-0 code 2, ...
    })
    trie = CodeTrie.build(codes, items, vocab.codebook_size)
    histories = [np.array([vocab.bos_id]), np.r_[vocab.bos_id, vocab.encode_codes(codes[2:3]).reshape(-1)],
                 np.r_[vocab.bos_id, vocab.encode_codes(codes[[5, 0]]).reshape(-1)]]
    for beam_width in (1, 2, 3, 10):
        retriever = Retriever(model, trie, vocab.n_special, vocab.bos_id, beam_width, batch_users=3)
        single = [retriever.retrieve(h) for h in histories]
        batched = retriever.retrieve_batch(histories)
        assert_same_retrieval(batched, single)
        for got in batched:
            assert set(got.items) <= set(items)
    assert batched[0].items[:2] == ["C", "D"]
    assert batched[1].items[:2] == ["E", "G"]   # ... then a uniform tie, broken towards the smaller code


def test_select_beams_keeps_the_best_per_user_ties_to_the_earlier():
    user = torch.tensor([0, 0, 0, 0, 1, 1, 2])
    scores = torch.tensor([1.0, 3.0, 3.0, 2.0, -1.0, -1.0, 0.0])
    top, rank = select_beams(user, scores, 2)
    assert top.tolist() == [1, 2, 4, 5, 6] and rank.tolist() == [0, 1, 0, 1, 0]
