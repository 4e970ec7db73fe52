"""The study statistics against brute force and closed forms: no p below what n allows, no interval from one unit."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats

from memrope.eval.paired_tests import MIN_BOOTSTRAP_N, holm, mean_interval, min_attainable_p, paired_test


def brute_force_p(d: np.ndarray) -> float:
    """Two-sided sign-flip p of the mean, over all 2^n patterns, written out."""
    observed = d.mean()
    means = np.array([np.mean(d * np.array(s)) for s in itertools.product((1, -1), repeat=d.size)])
    tol = 1e-12 * max(1.0, abs(observed))
    low, high = np.mean(means <= observed + tol), np.mean(means >= observed - tol)
    return min(1.0, 2 * min(low, high))


@pytest.mark.parametrize("n", range(2, 9))
def test_all_positive_differences_reach_exactly_the_floor(n):
    t = paired_test(np.arange(1.0, n + 1), np.zeros(n))
    assert t.exact and t.min_p == 2.0 ** (1 - n) == min_attainable_p(n) and t.p_value == pytest.approx(t.min_p)


@pytest.mark.parametrize("seed", range(5))
def test_p_equals_the_enumeration_and_never_undercuts_the_floor(seed):
    rng = np.random.default_rng(seed)
    n = 3 + seed
    a, b = rng.normal(size=n), rng.normal(size=n) + 0.3
    t = paired_test(a, b)
    assert t.p_value == pytest.approx(brute_force_p(a - b))
    assert t.p_value >= t.min_p


def test_one_unit_has_no_interval_and_no_evidence():
    t = paired_test([0.9], [0.8])
    assert t.p_value == 1.0 and t.min_p == 1.0
    iv = mean_interval([0.9826])
    assert iv.n == 1 and iv.kind == "none" and math.isnan(iv.low) and math.isnan(iv.high)


def test_small_n_gets_a_t_interval_large_n_a_bootstrap_one():
    v = np.array([1.0, 2.0, 4.0, 7.0])
    iv = mean_interval(v)
    half = stats.t.ppf(0.975, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size)  # the closed form
    assert iv.kind == "t" and iv.low == pytest.approx(v.mean() - half) and iv.high == pytest.approx(v.mean() + half)
    big = mean_interval(np.arange(MIN_BOOTSTRAP_N, dtype=float))
    assert big.kind == "bootstrap" and big.low < big.mean < big.high


def test_nan_pairs_are_dropped_and_ties_give_one():
    t = paired_test([1.0, float("nan"), 3.0], [0.0, 1.0, 2.0])
    assert t.difference.n == 2 and t.min_p == 0.5
    assert paired_test([1.0, 2.0], [1.0, 2.0]).p_value == 1.0


def test_holm_matches_the_step_down_definition():
    p = [0.01, 0.04, 0.03, 0.005, float("nan")]
    # sorted: 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> monotone: 0.02, 0.03, 0.06, 0.06
    assert holm(p)[:4] == pytest.approx([0.03, 0.06, 0.06, 0.02]) and math.isnan(holm(p)[4])
    assert holm([0.6, 0.6]) == [1.0, 1.0]
