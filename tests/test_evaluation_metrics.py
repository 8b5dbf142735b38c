"""evaluation/metrics.py: PrefOdds/UtilOdds in log space, statistics, accuracy, flags, JSON form and
bootstrap wiring, against hand-worked sweeps.

Each test pins a value computed by hand that a small change to the formulas, axes, thresholds or
dictionary keys would move.
"""
from __future__ import annotations

import json
import math
import statistics
import warnings
from decimal import Decimal, getcontext

import numpy as np
import pytest
from scipy.stats import bootstrap

from easyedit_split.evaluation.metrics import (
    compute_metrics, log1mexp, log_valid_probability, preference_odds, summarize, utility_odds,
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


# K = 2 multipliers, N = 3 pairs (K != N, so a sum over the wrong axis changes the shape)
MULTIPLIERS = [-1, 2]  # ints on purpose: the metrics hold them as floats
MATCHING = [[1.0, 2.0, 3.0], [2.0, 3.0, 4.0]]
NOT_MATCHING = [[2.0, 1.0, 5.0], [2.0, 7.0, 3.0]]
# PrefOdds = L_n - L_p
PREF = [[1.0, -1.0, 2.0], [0.0, 4.0, -1.0]]


def _hand_utility(lp: float, ln: float) -> float:
    p = math.exp(-lp) + math.exp(-ln)
    return math.log(p) - math.log(1.0 - p)


def _sweep(mode: str = "sequence") -> PairScores:
    return PairScores(MULTIPLIERS, np.array(MATCHING), np.array(NOT_MATCHING), np.ones(3), np.ones(3), mode)


def test_sweep_metrics_dictionary_holds_hand_computed_values():
    data = compute_metrics(_sweep(), n_bootstrap=0).to_dict()
    assert set(data) == {"multipliers", "preference", "utility", "preference_accuracy", "accuracy",
                         "undefined_utility", "utility_undefined", "matching_nll_mean", "not_matching_nll_mean",
                         "nll_mode"}
    assert data["multipliers"] == [-1.0, 2.0] and all(type(v) is float for v in data["multipliers"])
    # row 0: PrefOdds 1, -1, 2 -> mean 2/3, squared deviations 1/9 + 25/9 + 16/9 = 42/9, var 7/3, se sqrt(7/9)
    # row 1: PrefOdds 0, 4, -1 -> mean 1, squared deviations 1 + 9 + 4 = 14, var 7, se sqrt(7/3)
    pref = data["preference"]
    assert set(pref) == {"mean", "se", "ci_low", "ci_high", "n"}
    assert pref["mean"] == pytest.approx([2 / 3, 1.0], rel=1e-12)
    assert pref["se"] == pytest.approx([math.sqrt(7 / 9), math.sqrt(7 / 3)], rel=1e-12)
    assert pref["ci_low"] == [None, None] and pref["ci_high"] == [None, None]  # no bootstrap asked for
    assert pref["n"] == [3, 3] and all(type(v) is int for v in pref["n"])
    # positive PrefOdds: 2 of 3, then 1 of 3 (the tie 0 does not count)
    assert data["preference_accuracy"] == pytest.approx([2 / 3, 1 / 3], rel=1e-12)
    assert data["accuracy"] == data["preference_accuracy"]
    assert data["matching_nll_mean"] == pytest.approx([2.0, 3.0], rel=1e-12)
    assert data["not_matching_nll_mean"] == pytest.approx([8 / 3, 4.0], rel=1e-12)
    assert data["undefined_utility"] == [0, 0] and all(type(v) is int for v in data["undefined_utility"])
    assert data["utility_undefined"] is False
    assert data["nll_mode"] == "sequence"
    util = [[_hand_utility(lp, ln) for lp, ln in zip(mr, nr)] for mr, nr in zip(MATCHING, NOT_MATCHING)]
    assert data["utility"]["mean"] == pytest.approx([statistics.fmean(r) for r in util], rel=1e-12)
    assert data["utility"]["se"] == pytest.approx([statistics.stdev(r) / math.sqrt(3) for r in util], rel=1e-12)
    assert data["utility"]["n"] == [3, 3]
    json.dumps(data, allow_nan=False)  # strict JSON


def test_sweep_metrics_arrays_have_one_entry_per_multiplier():
    metrics = compute_metrics(_sweep(), n_bootstrap=0)
    assert metrics.multipliers.dtype == np.float64 and metrics.multipliers.tolist() == [-1.0, 2.0]
    np.testing.assert_array_equal(metrics.pref_odds, PREF)
    assert metrics.accuracy is metrics.preference_accuracy
    for stat in (metrics.preference, metrics.utility):
        for array in (stat.mean, stat.se, stat.ci_low, stat.ci_high, stat.n):
            assert array.shape == (2,)
        assert stat.ci_low.dtype == np.float64 and np.isnan(stat.ci_low).all() and np.isnan(stat.ci_high).all()


def test_per_token_mode_divides_by_the_token_counts():
    # matching 40 nats over 40 tokens, not matching 8 nats over 4: means 1 and 2 -> PrefOdds 1
    scores = PairScores([0.0], np.array([[40.0]]), np.array([[8.0]]), np.array([40.0]), np.array([4.0]), "token")
    metrics = compute_metrics(scores, n_bootstrap=0)
    assert metrics.pref_odds.tolist() == [[1.0]]
    assert metrics.util_odds[0, 0] == pytest.approx(_hand_utility(1.0, 2.0), rel=1e-12)
    assert metrics.matching_nll_mean.tolist() == [1.0] and metrics.not_matching_nll_mean.tolist() == [2.0]
    assert metrics.to_dict()["nll_mode"] == "token"


def test_utility_undefined_flag_and_counts_per_multiplier():
    # multiplier 0: L = 0.1, 0.2 per token -> p = e^-0.1 + e^-0.2 > 1; multiplier 1: all defined
    scores = PairScores([0.0, 1.0], np.array([[0.1, 3.0, 2.0], [1.0, 3.0, 2.0]]),
                        np.array([[0.2, 3.0, 2.0], [1.0, 3.0, 2.0]]), np.ones(3), np.ones(3), "token")
    metrics = compute_metrics(scores, n_bootstrap=0)
    assert metrics.undefined_utility.tolist() == [1, 0]
    assert metrics.utility_undefined is True
    assert metrics.utility.n.tolist() == [2, 3]
    data = metrics.to_dict()
    assert data["undefined_utility"] == [1, 0] and data["utility_undefined"] is True


def test_probability_exactly_one_has_no_utility():
    # L_p = L_n = ln 2: p = 1/2 + 1/2 = 1 exactly (log p = 0), so 1 - p = 0 and UtilOdds is undefined
    ln2 = math.log(2.0)
    assert log_valid_probability([ln2], [ln2])[0] == 0.0
    values, defined = utility_odds([ln2, 1.0], [ln2, 2.0])
    assert defined.tolist() == [False, True]
    assert values.dtype == np.float64 and np.isnan(values[0])
    assert values[1] == pytest.approx(_hand_utility(1.0, 2.0), rel=1e-12)


def test_log1mexp_returns_floats_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = log1mexp([0.0, 0.5, -1e-20, -50.0, -800.0, -np.inf])
    assert out.dtype == np.float64
    assert out[0] == -np.inf and np.isnan(out[1])
    assert out[2] == pytest.approx(math.log(1e-20), rel=1e-12)
    assert out[3] == pytest.approx(-math.exp(-50.0), rel=1e-12)
    assert out[4] == 0.0 and out[5] == 0.0
    assert log1mexp(-1.0) == pytest.approx(math.log(1.0 - math.exp(-1.0)), rel=1e-14)


def test_summarize_hand_values_with_missing_entries():
    # K = 2 rows of N = 5; NaN and inf entries are left out
    values = [[1.0, 3.0, np.nan, 8.0, np.inf], [2.0, 2.0, 2.0, 2.0, 2.0]]
    stats = summarize(values, n_bootstrap=0)
    assert stats.n.tolist() == [3, 5]
    assert stats.mean.tolist() == pytest.approx([4.0, 2.0], rel=1e-12)
    # row 0: deviations -3, -1, 4 -> 26 / 2 = 13, se sqrt(13 / 3); row 1 constant: se 0
    assert stats.se.tolist() == pytest.approx([math.sqrt(13 / 3), 0.0], rel=1e-12)
    assert np.isnan(stats.ci_low).all() and np.isnan(stats.ci_high).all() and stats.ci_low.shape == (2,)


def test_summarize_two_values_and_one_value():
    # two values 0 and 2: mean 1, var (1 + 1) / 1 = 2, se sqrt(2 / 2) = 1; one value: no se
    stats = summarize([[0.0, 2.0], [5.0, np.nan]], n_bootstrap=0)
    assert stats.se[0] == pytest.approx(1.0, rel=1e-12)
    assert np.isnan(stats.se[1]) and stats.mean[1] == 5.0


def test_summarize_accepts_a_single_row_and_json_style_missing_values():
    stats = summarize([1.0, None, 3.0], n_bootstrap=0)  # None (a JSON null) is a missing value
    assert stats.mean.tolist() == [2.0] and stats.n.tolist() == [2]


def test_constant_and_single_samples_give_a_point_interval():
    stats = summarize([[3.0, 3.0, 3.0], [7.0, np.nan, np.nan], [np.nan, np.nan, np.nan]], n_bootstrap=100)
    assert stats.ci_low[:2].tolist() == [3.0, 7.0] and stats.ci_high[:2].tolist() == [3.0, 7.0]
    assert np.isnan(stats.ci_low[2]) and np.isnan(stats.ci_high[2]) and np.isnan(stats.mean[2])
    assert stats.n.tolist() == [3, 1, 0]


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # scipy's standard error of one resample
def test_one_resample_gives_one_resample_mean():
    # with one resample both ends are that resample's mean: a mean of 4 draws from {0, 1}, i.e. k/4
    stats = summarize([[0.0, 0.0, 1.0, 1.0]], n_bootstrap=1, seed=3)
    assert stats.ci_low[0] == stats.ci_high[0]
    assert stats.ci_low[0] in (0.0, 0.25, 0.5, 0.75, 1.0)


def test_confidence_level_sets_the_percentiles():
    """Resample means of [0, 0, 0, 1] are k/4 with k ~ Binomial(4, 1/4): P(k=0) = 81/256 = 0.316 > 0.2 and
    P(k<=1) = 189/256 = 0.738 < 0.8 < P(k<=2) = 243/256, so the 60% interval (20th, 80th percentile) is [0, 0.5]."""
    stats = summarize([[0.0, 0.0, 0.0, 1.0]], n_bootstrap=4000, confidence=0.6, seed=0)
    assert stats.ci_low.tolist() == [0.0] and stats.ci_high.tolist() == [0.5]


def _scipy_interval(sample, n_resamples, confidence, seed):
    result = bootstrap((np.asarray(sample),), np.mean, n_resamples=n_resamples, confidence_level=confidence,
                       method="percentile", random_state=np.random.default_rng(seed))
    return result.confidence_interval.low, result.confidence_interval.high


def test_defaults_are_the_documented_bootstrap():
    """Defaults: 1000 percentile resamples, 95%, a generator seeded with 0 for every row (scipy directly)."""
    rng = np.random.default_rng(11)
    values = rng.normal(0.0, 1.0, size=(2, 9))
    stats = summarize(values)
    for row in range(2):
        low, high = _scipy_interval(values[row], 1000, 0.95, 0)
        assert stats.ci_low[row] == low and stats.ci_high[row] == high


def test_compute_metrics_passes_its_bootstrap_settings_and_defaults():
    matching = np.array([[1.0, 2.5, 0.5, 3.0, 1.5], [2.0, 1.0, 4.0, 0.5, 2.5]])
    not_matching = np.array([[2.0, 1.0, 3.5, 2.5, 4.0], [1.0, 3.0, 2.0, 2.5, 0.5]])
    scores = PairScores(np.array([0.0, 1.0]), matching, not_matching, np.ones(5), np.ones(5), "sequence")
    pref = not_matching - matching
    util = np.array([[_hand_utility(a, b) for a, b in zip(mr, nr)] for mr, nr in zip(matching, not_matching)])
    for kwargs, (n, confidence, seed) in (({"n_bootstrap": 300, "confidence": 0.8, "seed": 5}, (300, 0.8, 5)),
                                          ({}, (1000, 0.95, 0))):
        metrics = compute_metrics(scores, **kwargs)
        for stat, values in ((metrics.preference, pref), (metrics.utility, util)):
            for row in range(2):
                low, high = _scipy_interval(values[row], n, confidence, seed)
                assert stat.ci_low[row] == pytest.approx(low, rel=1e-12, abs=1e-12)
                assert stat.ci_high[row] == pytest.approx(high, rel=1e-12, abs=1e-12)


def test_rows_of_equal_length_share_resample_indices():
    # row 1 = 2 * row 0 + 1: with the same resamples its interval is the affine image of row 0's
    row = np.array([0.3, -1.2, 2.5, 0.9, 1.7, -0.4])
    stats = summarize(np.stack([row, 2.0 * row + 1.0]), n_bootstrap=200, seed=4)
    assert stats.ci_low[1] == pytest.approx(2.0 * stats.ci_low[0] + 1.0, rel=1e-12)
    assert stats.ci_high[1] == pytest.approx(2.0 * stats.ci_high[0] + 1.0, rel=1e-12)


def test_statistic_to_dict_writes_infinite_values_as_null():
    stats = summarize([[np.nan, np.nan]], n_bootstrap=0)
    stats.mean = np.array([np.inf])
    stats.se = np.array([-np.inf])
    data = stats.to_dict()
    assert data == {"mean": [None], "se": [None], "ci_low": [None], "ci_high": [None], "n": [0]}
    assert type(data["n"][0]) is int
    stats.mean = np.array([1.5])
    assert stats.to_dict()["mean"] == [1.5] and type(stats.to_dict()["mean"][0]) is float


def test_log1mexp_computes_float32_inputs_in_float64():
    """Scores arrive as float32: the result must still carry float64 precision (the reference is 60-digit
    decimal arithmetic on the exact float32 values)."""
    from decimal import Decimal, getcontext

    getcontext().prec = 60
    xs = np.array([-1e-6, -0.3, -0.9, -5.0], dtype=np.float32)
    expected = [float((1 - Decimal(float(x)).exp()).ln()) for x in xs]
    np.testing.assert_allclose(log1mexp(xs), expected, rtol=1e-14)


def test_summarize_warns_nothing_for_empty_and_single_rows():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        stats = summarize([[np.nan, np.nan], [4.0, np.nan]], n_bootstrap=10)
    assert np.isnan(stats.mean[0]) and np.isnan(stats.se).all() and stats.mean[1] == 4.0


def test_constant_sample_interval_is_exactly_the_value():
    # averaging three 0.1s gives 0.10000000000000002; the interval of a constant sample is 0.1 itself
    stats = summarize([[0.1, 0.1, 0.1], [0.1, 0.2, 0.1]], n_bootstrap=50)
    assert stats.ci_low[0] == 0.1 and stats.ci_high[0] == 0.1
    assert stats.ci_low[1] < stats.ci_high[1]  # a varying sample gets a real interval
