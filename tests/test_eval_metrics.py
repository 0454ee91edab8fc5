"""AUC, GAUC and retrieval metrics against brute-force definitions."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recbase.eval.metrics import auc, average_ranks, gauc, overall, retrieval_metrics


def brute_auc(scores, labels):
    """The Wilcoxon-Mann-Whitney definition: over all (positive, negative) pairs, wins + half the ties."""
    pos = [s for s, y in zip(scores, labels) if y == 1]
    neg = [s for s, y in zip(scores, labels) if y == 0]
    if not pos or not neg:
        return float("nan")
    total = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return total / (len(pos) * len(neg))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.integers(0, 1)), min_size=2, max_size=60))
def test_auc_matches_pairwise_count_with_ties(pairs):
    scores = [float(s) for s, _ in pairs]  # few distinct values: many ties
    labels = [y for _, y in pairs]
    expected = brute_auc(scores, labels)
    got = auc(scores, labels)
    if math.isnan(expected):
        assert math.isnan(got)
    else:
        assert got == pytest.approx(expected, abs=1e-12)


def test_auc_known_values():
    assert auc([0.1, 0.2, 0.3, 0.4], [0, 0, 1, 1]) == 1.0
    assert auc([0.4, 0.3, 0.2, 0.1], [0, 0, 1, 1]) == 0.0
    assert auc([1.0, 1.0, 1.0, 1.0], [0, 1, 0, 1]) == 0.5


def test_average_ranks_share_tied_ranks():
    np.testing.assert_allclose(average_ranks(np.array([3.0, 1.0, 3.0, 2.0])), [3.5, 1.0, 3.5, 2.0])


def test_auc_rejects_nan_and_shape_mismatch():
    with pytest.raises(ValueError, match="NaN"):
        auc([0.1, float("nan")], [0, 1])
    with pytest.raises(ValueError, match="shape"):
        auc([0.1, 0.2, 0.3], [0, 1])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 3), st.integers(0, 1)), min_size=1, max_size=80))
def test_gauc_is_mean_of_per_user_brute_force_auc(rows):
    groups = [g for g, _, _ in rows]
    scores = [float(s) for _, s, _ in rows]
    labels = [y for _, _, y in rows]
    per_user, weights = [], []
    for g in sorted(set(groups)):
        s = [x for x, gg in zip(scores, groups) if gg == g]
        y = [x for x, gg in zip(labels, groups) if gg == g]
        a = brute_auc(s, y)
        if not math.isnan(a):  # users with one class are skipped
            per_user.append(a)
            weights.append(sum(y) * (len(y) - sum(y)))
    got, got_w = gauc(groups, scores, labels), gauc(groups, scores, labels, weighted=True)
    if not per_user:
        assert math.isnan(got) and math.isnan(got_w)
    else:
        assert got == pytest.approx(np.mean(per_user), abs=1e-12)
        assert got_w == pytest.approx(np.average(per_user, weights=weights), abs=1e-12)


def test_overall_is_unweighted_mean_ignoring_undefined():
    assert overall([0.6, 0.8, float("nan")]) == pytest.approx(0.7)


def test_retrieval_metrics_match_definitions():
    ranks = [1, 3, 7, 15, float("inf")]
    m = retrieval_metrics(ranks, ks=(1, 5, 10, 20))
    assert m["recall@1"] == pytest.approx(1 / 5)
    assert m["recall@5"] == pytest.approx(2 / 5)
    assert m["recall@10"] == pytest.approx(3 / 5)
    assert m["recall@20"] == pytest.approx(4 / 5)
    assert m["ndcg@5"] == pytest.approx((1.0 + 1 / math.log2(4)) / 5)
    assert m["ndcg@20"] == pytest.approx((1.0 + 1 / math.log2(4) + 1 / math.log2(8) + 1 / math.log2(16)) / 5)
    assert m["mrr"] == pytest.approx((1 + 1 / 3 + 1 / 7 + 1 / 15) / 5)
    with pytest.raises(ValueError, match="1-based"):
        retrieval_metrics([0])
