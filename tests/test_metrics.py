"""Metric values on hand-computed cases, ties included; paired tests."""

from __future__ import annotations

import math

import numpy as np
import pytest

from protocols import metrics as M
from protocols.stats import holm, paired_ttest


def test_hand_computed_no_ties():
    scores = np.array([[0.9, 0.5, 0.1, 0.3]])  # positive at col 1 -> rank 2
    pos = np.array([1])
    assert M.ndcg_at_k(scores, pos, 1)[0] == 0.0
    assert M.ndcg_at_k(scores, pos, 3)[0] == pytest.approx(1 / math.log2(3))
    assert M.hr_at_k(scores, pos, 3)[0] == 1.0
    assert M.mrr(scores, pos)[0] == 0.5


def test_constant_scorer_gets_random_expectation():
    scores = np.zeros((5, 30))
    pos = np.arange(5)
    assert np.allclose(M.ndcg_at_k(scores, pos, 1), 1 / 30)
    want3 = (1 + 1 / math.log2(3) + 1 / math.log2(4)) / 30
    assert np.allclose(M.ndcg_at_k(scores, pos, 3), want3)
    assert np.allclose(M.mrr(scores, pos), sum(1 / r for r in range(1, 31)) / 30)


def test_partial_tie():
    # one item above, positive tied with one other -> rank 2 or 3 with prob 1/2 each
    scores = np.array([[5.0, 2.0, 2.0, 1.0]])
    pos = np.array([1])
    assert M.ndcg_at_k(scores, pos, 3)[0] == pytest.approx((1 / math.log2(3) + 0.5) / 2)
    assert M.hr_at_k(scores, pos, 2)[0] == pytest.approx(0.5)


def test_non_finite_is_an_error():
    with pytest.raises(ValueError, match="non-finite"):
        M.ndcg_at_k(np.array([[1.0, np.nan]]), np.array([0]), 1)
    with pytest.raises(ValueError, match="non-finite"):
        M.mrr(np.array([[np.inf, np.inf]]), np.array([0]))


def test_abstention_is_a_miss_not_a_tie():
    """A row of NaN ranks the positive last; a row of equal scores gets the expectation."""
    scores = np.array([[np.nan] * 4, [0.0] * 4, [3.0, 2.0, 1.0, 0.0]])
    pos = np.array([0, 0, 0])
    assert M.abstained(scores).tolist() == [True, False, False]
    assert M.ndcg_at_k(scores, pos, 3).tolist()[0] == 0.0
    assert M.hr_at_k(scores, pos, 3)[0] == 0.0 and M.hr_at_k(scores, pos, 4)[0] == 1.0
    assert M.mrr(scores, pos)[0] == pytest.approx(1 / 4)
    assert M.ndcg_at_k(scores, pos, 1)[1:].tolist() == [pytest.approx(1 / 4), 1.0]


def test_metric_names():
    assert M.parse_metric("NDCG@3") == ("ndcg", 3)
    with pytest.raises(ValueError):
        M.parse_metric("AUC")


def test_paired_ttest_and_holm():
    rng = np.random.default_rng(0)
    a = rng.random(400)
    assert paired_ttest(a, a) == 1.0
    assert paired_ttest(a + 0.1 + rng.normal(0, 0.01, 400), a) < 1e-6
    assert paired_ttest(a + rng.normal(0, 0.2, 400), a) > 0.01
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
