"""Curve fits: continuity at m = 0, parameter recovery on the paper's model with noise, goodness of fit
that falls for the wrong model, refusal on short sweeps, summaries against hand interpolation."""
from __future__ import annotations

import logging

import numpy as np
import pytest

from easyedit_split.evaluation.fits import (
    adjusted_r_squared, drop_multiplier, fit_and_summarize, fit_curve, fit_preference, fit_utility,
    frontier_area, interpolated, parameter_count, preference_curve, preference_gain, utility_curve, validity_decay,
)

DECAY = dict(m_pos=1.0, L_pos=20.0, p_pos=1.5, m_neg=-0.5, L_neg=10.0, p_neg=1.0)
UTILITY_TRUTH = dict(beta_u=4.0, b_u=-3.0, **DECAY)
PREFERENCE_TRUTH = dict(alpha=1.0, beta=0.5, b=-0.2, **DECAY)


def _g(m, centre, scale, power):
    return (1 + (m - centre) ** 2 / scale) ** -power


def test_validity_decay_is_normalised_rational_quadratic_per_side():
    m = np.array([-2.0, 3.0])
    expected = [_g(-2.0, -0.5, 10.0, 1.0) / _g(0.0, -0.5, 10.0, 1.0), _g(3.0, 1.0, 20.0, 1.5) / _g(0.0, 1.0, 20.0, 1.5)]
    np.testing.assert_allclose(validity_decay(m, *DECAY.values()), expected, rtol=1e-12)


def test_decay_is_one_at_zero_from_both_sides():
    # sides with very different centres and shapes still meet at D(0) = 1
    decay = dict(m_pos=3.0, L_pos=2.0, p_pos=4.0, m_neg=-6.0, L_neg=50.0, p_neg=0.3)
    values = validity_decay(np.array([-1e-9, 0.0, 1e-9]), *decay.values())
    np.testing.assert_allclose(values, 1.0, atol=1e-8)


def test_parameter_counts():
    assert parameter_count("preference", "full") == 9 and parameter_count("utility", "full") == 8
    assert parameter_count("preference", "shared") == 7 and parameter_count("utility", "shared") == 6
    assert parameter_count("utility", "full", sides=1) == 5


def test_adjusted_r2_by_hand():
    # n = 5 points, k = 2 parameters: 1 - (1 - 0.9) * 4 / 3
    assert adjusted_r_squared(0.9, 5, 2) == pytest.approx(1 - 0.1 * 4 / 3)
    assert np.isnan(adjusted_r_squared(0.9, 3, 3))


def _noisy(curve, truth, m, sigma, seed):
    return curve(m, *truth.values()) + np.random.default_rng(seed).normal(0.0, sigma, m.size)


@pytest.mark.parametrize("seed", [0, 1])
def test_utility_fit_recovers_parameters_from_noisy_paper_model(seed):
    m = np.linspace(-8, 8, 17)
    fit = fit_utility(m, _noisy(utility_curve, UTILITY_TRUTH, m, 0.02, seed))
    assert fit.fitted and fit.shape == "full" and fit.n_params == 8
    # tolerances: the linear head and centres within 0.2 (5% of beta_u); L and p trade off against
    # each other, so they are checked within 40%, and the curve itself within 3 noise sigmas
    for name in ("beta_u", "b_u", "m_pos", "m_neg"):
        assert fit.params[name] == pytest.approx(UTILITY_TRUTH[name], abs=0.2), name
    for name in ("L_pos", "p_pos", "L_neg", "p_neg"):
        assert fit.params[name] == pytest.approx(UTILITY_TRUTH[name], rel=0.4), name
    grid = np.linspace(-8, 8, 161)
    assert np.abs(fit(grid) - utility_curve(grid, *UTILITY_TRUTH.values())).max() < 0.06
    assert fit.adjusted_r2 > 0.99 and fit.loo_rmse < 0.1 and fit.is_good


@pytest.mark.parametrize("seed", [0, 1])
def test_preference_fit_recovers_parameters_from_noisy_paper_model(seed):
    m = np.linspace(-8, 8, 17)
    fit = fit_preference(m, _noisy(preference_curve, PREFERENCE_TRUTH, m, 0.02, seed))
    assert fit.fitted and fit.shape == "full" and fit.n_params == 9
    for name in ("alpha", "beta", "b"):
        assert fit.params[name] == pytest.approx(PREFERENCE_TRUTH[name], abs=0.25), name
    grid = np.linspace(-8, 8, 161)
    assert np.abs(fit(grid) - preference_curve(grid, *PREFERENCE_TRUTH.values())).max() < 0.1
    assert fit.is_good


def test_fitted_curve_is_continuous_at_zero():
    m = np.linspace(-8, 8, 17)
    fit = fit_utility(m, _noisy(utility_curve, UTILITY_TRUTH, m, 0.05, 3))
    left, zero, right = fit(np.array([-1e-9, 0.0, 1e-9]))
    assert left == pytest.approx(zero, abs=1e-6) and right == pytest.approx(zero, abs=1e-6)
    assert zero == pytest.approx(fit.params["beta_u"] + fit.params["b_u"])


def test_centres_stay_on_their_own_side():
    m = np.linspace(-8, 8, 17)
    for seed in range(3):
        fit = fit_preference(m, _noisy(preference_curve, PREFERENCE_TRUTH, m, 0.3, seed))
        assert 0.0 <= fit.params["m_pos"] <= 8.0 and -8.0 <= fit.params["m_neg"] <= 0.0


def test_goodness_of_fit_falls_when_the_model_is_wrong():
    m = np.linspace(-8, 8, 17)
    right = fit_utility(m, _noisy(utility_curve, UTILITY_TRUTH, m, 0.05, 0))
    # a curve from another family: an oscillation the decay model cannot follow
    wrong = fit_utility(m, 2.0 * np.sin(1.7 * m) + _noisy(lambda x: 0 * x, {}, m, 0.05, 0))
    assert wrong.adjusted_r2 < right.adjusted_r2 - 0.3
    assert wrong.loo_rmse > 5 * right.loo_rmse
    assert wrong.loo_r2 < 0.5 and not wrong.is_good and "poor fit" in wrong.message


def test_short_sweep_uses_shared_shape_and_says_so():
    m = np.array([-8.0, -4.0, -2.0, -1.0, 0.0, 1.0, 2.0, 4.0, 8.0])   # the default 9-point sweep
    fit = fit_preference(m, _noisy(preference_curve, PREFERENCE_TRUTH, m, 0.02, 0))
    assert fit.fitted and fit.shape == "shared" and fit.n_params == 7
    assert fit.to_dict()["shape"] == "shared"
    assert fit.params["L_pos"] == fit.params["L_neg"] and fit.params["p_pos"] == fit.params["p_neg"]


def test_too_few_points_refuses_with_a_clear_result(caplog):
    m = np.array([-2.0, -1.0, 0.0, 1.0, 2.0])
    with caplog.at_level(logging.WARNING, logger="easyedit_split.evaluation.fits"):
        fit = fit_utility(m, -np.abs(m))
    assert not fit.fitted and fit.shape == "none"
    assert "needs at least 8" in fit.message and "needs at least 8" in caplog.text   # shared utility: k = 6
    assert np.isnan(fit(np.array([0.0]))).all() and fit.to_dict()["r2"] is None
    with pytest.raises(ValueError, match="fit shape"):
        fit_curve("utility", m, -np.abs(m), shape="wide")


def test_explicit_full_shape_on_too_few_points_refuses():
    m = np.linspace(-4, 4, 9)
    fit = fit_preference(m, m, shape="full")   # k = 9 needs 11 points
    assert not fit.fitted and "needs at least 11" in fit.message


# Synthetic curves with hand-computable summaries: P(m) = m, U(m) = -|m| on m in [-4, 4].
MULTIPLIERS = np.arange(-4.0, 5.0)
PREF = interpolated(MULTIPLIERS, MULTIPLIERS)
UTIL = interpolated(MULTIPLIERS, -np.abs(MULTIPLIERS))


def test_drop_multiplier_both_directions():
    assert drop_multiplier(UTIL, MULTIPLIERS, 1.5, +1) == pytest.approx(1.5)
    assert drop_multiplier(UTIL, MULTIPLIERS, 1.5, -1) == pytest.approx(-1.5)
    assert drop_multiplier(UTIL, MULTIPLIERS, 5.0, +1) is None  # never within the swept range


def test_preference_gain_at_utility_loss():
    assert preference_gain(PREF, UTIL, MULTIPLIERS, 1.0) == pytest.approx(1.0, abs=1e-3)
    assert preference_gain(PREF, UTIL, MULTIPLIERS, 2.5) == pytest.approx(2.5, abs=1e-3)
    assert preference_gain(PREF, UTIL, MULTIPLIERS, 10.0) == pytest.approx(4.0)  # capped by the range


def test_frontier_area():
    # gain(delta) = delta for delta <= 4: area up to 3 = 3^2 / 2
    assert frontier_area(PREF, UTIL, MULTIPLIERS, 3.0) == pytest.approx(4.5, abs=1e-2)


def test_frontier_area_on_a_piecewise_linear_case_by_hand():
    # P rises 0 -> 2 on [0, 1] then 2 -> 3 on [1, 2]; U loses 0.5 on [0, 1] then 2 more on [1, 2].
    # gain(d) = 4d for d <= 0.5, then 2 + (d - 0.5)/2 up to d = 2.5: area to 2 = 0.5 + (2 + 2.75)/2 * 1.5
    m = np.array([-1.0, 0.0, 1.0, 2.0])
    pref = interpolated(m, [0.0, 0.0, 2.0, 3.0])
    util = interpolated(m, [-10.0, 0.0, -0.5, -2.5])
    assert frontier_area(pref, util, m, 2.0, points=401) == pytest.approx(0.5 + 4.75 / 2 * 1.5, abs=2e-3)


def test_good_fit_summaries_agree_with_interpolation():
    m = np.linspace(-8, 8, 17)
    report = fit_and_summarize(m, _noisy(preference_curve, PREFERENCE_TRUTH, m, 0.02, 0),
                               _noisy(utility_curve, UTILITY_TRUTH, m, 0.02, 0), utility_loss=0.5, frontier_max_loss=2.0)
    assert set(report.summaries) == {"fit", "interpolation"} and report.headline.source == "fit"
    fit, inter = report.summaries["fit"], report.summaries["interpolation"]
    assert fit.frontier_area > 0.5
    assert fit.frontier_area == pytest.approx(inter.frontier_area, rel=0.15)
    assert fit.preference_gain == pytest.approx(inter.preference_gain, rel=0.15)
    assert fit.drop_multiplier_pos == pytest.approx(inter.drop_multiplier_pos, rel=0.15)
    assert report.to_dict()["headline_source"] == "fit"


def test_poor_fit_reports_interpolation():
    m = np.linspace(-8, 8, 17)
    report = fit_and_summarize(m, m, 2.0 * np.sin(1.7 * m))
    assert "fit" not in report.summaries and report.headline.source == "interpolation"
    assert report.to_dict()["utility"]["good"] is False


def test_fit_reports_adjusted_r2_from_its_own_residuals():
    m = np.linspace(-8, 8, 9)
    y = _noisy(utility_curve, UTILITY_TRUTH, m, 0.3, 4)
    fit = fit_utility(m, y)                      # shared shape: k = 6, n = 9
    residual = ((fit(m) - y) ** 2).sum()
    total = ((y - y.mean()) ** 2).sum()
    assert fit.r2 == pytest.approx(1 - residual / total)
    assert fit.adjusted_r2 == pytest.approx(1 - (residual / total) * 8 / 3)
    assert fit.rmse == pytest.approx(np.sqrt(residual / 9))


def test_coarse_utility_fit_leaves_the_summaries_to_interpolation():
    # the demo's CAA shape: utility spans 75 nats, so a fit with R^2 ~ 0.98 still misses by nats,
    # and the 1-nat summaries must come from the measured points (a nonzero area, not 0.00)
    m = np.array([-8.0, -4.0, -2.0, -1.0, 0.0, 1.0, 2.0, 4.0, 8.0])
    pref = np.array([-5, -3, -1, -0.5, 0, 3, 8, 10, 15.5])
    util = np.array([-129, -90, -60, -55, -54.1, -56.5, -62, -78.4, -129.3])
    report = fit_and_summarize(m, pref, util)
    assert report.headline.source == "interpolation" and "too coarse" in report.headline_reason
    # by hand: preference falls left of 0, so the gain is on the right, where U falls 2.4 over [0, 1]:
    # loss 1 is reached at m = 1/2.4, where P = 3/2.4 = 1.25
    assert report.headline.preference_gain == pytest.approx(1.25, abs=1e-3)
    assert report.headline.frontier_area > 1.0


def test_bump_height_is_bounded_so_wrong_model_predictions_stay_finite():
    # without the bound, a far centre with a tiny L makes D astronomically large between the points
    m = np.linspace(-8, 8, 9)
    fit = fit_utility(m, 2.0 * np.sin(1.7 * m) + _noisy(lambda x: 0 * x, {}, m, 0.05, 0))
    assert fit.loo_rmse < 10.0                    # the data's amplitude is 2
    for side in ("pos", "neg"):
        height = (1 + fit.params[f"m_{side}"] ** 2 / fit.params[f"L_{side}"]) ** fit.params[f"p_{side}"]
        assert height <= 100.0 * 1.05
