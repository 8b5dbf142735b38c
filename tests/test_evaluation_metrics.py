"""PrefOdds/UtilOdds in log space against hand-computed values; statistics and flags."""
from __future__ import annotations

import math
from decimal import Decimal, getcontext

import numpy as np
import pytest

from easyedit_split.evaluation.metrics import (
    compute_metrics, log1mexp, preference_odds, summarize, utility_odds,
)
from easyedit_split.evaluation.sweep_nll import PairScores


def test_log_odds_match_hand_values():
    # L_p = 1, L_n = 2: PrefOdds = 1; p = e^-1 + e^-2
    p = math.exp(-1) + math.exp(-2)
    assert preference_odds([1.0], [2.0])[0] == pytest.approx(1.0)
    util, defined = utility_odds([1.0], [2.0])
    assert defined[0]
    assert util[0] == pytest.approx(math.log(p) - math.log(1 - p), rel=1e-12)
    assert util[0] == pytest.approx(0.0128591, abs=1e-6)


def test_utility_odds_stay_finite_where_exponentiating_fails():
    # L = 1000 nats: e^-1000 underflows to 0, so the naive log(p) is -inf; log space gives -(1000 - log 2)
    util, defined = utility_odds([1000.0], [1000.0])
    assert defined[0] and util[0] == pytest.approx(-1000.0 + math.log(2.0), rel=1e-12)
    # p close to 1 (tiny NLLs): UtilOdds large and finite
    util, _ = utility_odds([1e-12], [60.0])
    assert np.isfinite(util[0]) and util[0] == pytest.approx(-math.log(1e-12), rel=1e-6)


def test_log1mexp_is_stable_at_both_ends():
    assert log1mexp(-1e-20) == pytest.approx(math.log(1e-20), rel=1e-12)  # log(1 - e^x) ~ log(-x)
    assert log1mexp(-50.0) == pytest.approx(-math.exp(-50.0), rel=1e-12)  # ~ -e^x, not 0 - rounding
    assert log1mexp(-800.0) == 0.0
    assert log1mexp(-math.log(2.0)) == pytest.approx(math.log(0.5), rel=1e-14)
    assert log1mexp(0.0) == -np.inf
    assert np.isnan(log1mexp(0.5))
    # independent reference: 120-digit decimal arithmetic
    getcontext().prec = 120
    xs = np.concatenate([-np.logspace(-15, 2, 60), [-0.6931, -0.6932]])
    expected = [float((1 - Decimal(float(x)).exp()).ln()) for x in xs]
    np.testing.assert_allclose(log1mexp(xs), expected, rtol=1e-13)


def _scores(matching_sum, not_matching_sum, counts=None, mode="sequence"):
    matching_sum = np.atleast_2d(matching_sum)
    n = matching_sum.shape[1]
    counts = np.ones(n) if counts is None else np.asarray(counts, float)
    return PairScores(np.arange(matching_sum.shape[0], dtype=float), matching_sum, np.atleast_2d(not_matching_sum),
                      counts, counts, mode)


def test_per_token_mode_flags_rows_where_p_reaches_one():
    # row 0: per-token means 0.1 and 0.2 nats: p = e^-0.1 + e^-0.2 = 1.72 >= 1 -> undefined, flagged
    scores = _scores([[4.0, 10.0]], [[8.0, 12.0]], counts=[40, 4], mode="token")
    metrics = compute_metrics(scores, n_bootstrap=50)
    assert metrics.undefined_utility.tolist() == [1]
    assert metrics.utility_undefined
    assert np.isnan(metrics.util_odds[0, 0]) and np.isfinite(metrics.util_odds[0, 1])
    assert metrics.utility.n.tolist() == [1]
    assert np.isfinite(metrics.utility.mean).all()  # the summary leaves the row out, no NaN
    # the same sums as sequence NLLs are all defined
    assert not compute_metrics(scores.with_mode("sequence"), n_bootstrap=10).utility_undefined


def test_accuracy_is_share_of_positive_preference():
    scores = _scores([[1.0, 2.0, 3.0, 4.0]], [[2.0, 1.0, 5.0, 4.0]])
    assert compute_metrics(scores, n_bootstrap=0).accuracy.tolist() == [0.5]  # ties are not preferences


def test_bootstrap_interval_contains_mean_and_is_seeded():
    rng = np.random.default_rng(3)
    values = rng.normal(2.0, 1.0, size=(3, 40))
    first = summarize(values, n_bootstrap=500, seed=7)
    again = summarize(values, n_bootstrap=500, seed=7)
    other = summarize(values, n_bootstrap=500, seed=8)
    assert (first.ci_low <= first.mean).all() and (first.mean <= first.ci_high).all()
    np.testing.assert_array_equal(first.ci_low, again.ci_low)
    assert not np.array_equal(first.ci_low, other.ci_low)
    np.testing.assert_allclose(first.mean, values.mean(axis=1))
    np.testing.assert_allclose(first.se, values.std(axis=1, ddof=1) / np.sqrt(40))


def test_bootstrap_interval_matches_a_hand_computed_distribution():
    """Resample means of [0, 0, 0, 1] are k/4 with k ~ Binomial(4, 1/4): P(k <= 2) = 243/256 = 0.949 < 0.975
    < P(k <= 3) = 255/256, and P(k = 0) = 81/256 > 0.025, so the 95% percentile interval is [0, 0.75].
    [0, 1]: means 0, 0.5, 1 with P = 1/4, 1/2, 1/4 give [0, 1]. A NaN is left out; one value gives [v, v]."""
    stats = summarize(np.array([[0.0, 0.0, 0.0, 1.0], [0.0, 1.0, np.nan, np.nan], [2.5, np.nan, np.nan, np.nan]]),
                      n_bootstrap=4000, seed=0)
    np.testing.assert_array_equal(stats.ci_low, [0.0, 0.0, 2.5])
    np.testing.assert_array_equal(stats.ci_high, [0.75, 1.0, 2.5])
    np.testing.assert_array_equal(stats.n, [4, 2, 1])
