"""Curve fits recover known parameters; summaries match hand values on synthetic curves."""
from __future__ import annotations

import numpy as np
import pytest

from easyedit_split.evaluation.fits import (
    PREFERENCE_PARAMS, UTILITY_PARAMS, drop_multiplier, fit_and_summarize, fit_preference, fit_utility,
    frontier_area, interpolated, preference_curve, preference_gain, utility_curve, validity_decay,
)

DECAY = dict(m_pos=1.0, L_pos=20.0, p_pos=1.5, m_neg=-0.5, L_neg=10.0, p_neg=1.0)


def test_validity_decay_is_asymmetric_rational_quadratic():
    m = np.array([-2.0, 3.0])
    expected = [(1 + (-2.0 + 0.5) ** 2 / 10.0) ** -1.0, (1 + (3.0 - 1.0) ** 2 / 20.0) ** -1.5]
    np.testing.assert_allclose(validity_decay(m, *DECAY.values()), expected)


def test_utility_fit_recovers_parameters():
    truth = dict(beta_u=4.0, b_u=-3.0, **DECAY)
    m = np.linspace(-8, 8, 17)
    fit = fit_utility(m, utility_curve(m, *truth.values()))
    assert fit.converged and fit.r2 > 0.99
    for name in UTILITY_PARAMS:
        assert fit.params[name] == pytest.approx(truth[name], rel=1e-3, abs=1e-3), name


def test_preference_fit_recovers_parameters():
    truth = dict(alpha=1.0, beta=0.5, b=-0.2, **DECAY)
    m = np.linspace(-8, 8, 17)
    fit = fit_preference(m, preference_curve(m, *truth.values()))
    assert fit.converged and fit.r2 > 0.99
    for name in PREFERENCE_PARAMS:
        assert fit.params[name] == pytest.approx(truth[name], rel=1e-3, abs=1e-3), name


def test_noisy_curve_fits_well():
    rng = np.random.default_rng(0)
    m = np.linspace(-8, 8, 9)
    values = utility_curve(m, 4.0, -3.0, *DECAY.values()) + rng.normal(0, 0.02, m.size)
    assert fit_utility(m, values).r2 > 0.99


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


def test_fit_and_summarize_reports_both_sources():
    m = np.linspace(-8, 8, 9)
    report = fit_and_summarize(m, preference_curve(m, 1.0, 0.0, 0.0, *DECAY.values()),
                               utility_curve(m, 4.0, -3.0, *DECAY.values()))
    assert set(report.summaries) == {"fit", "interpolation"}
    as_dict = report.to_dict()
    assert as_dict["utility"]["r2"] > 0.99
    fit, inter = report.summaries["fit"], report.summaries["interpolation"]
    assert fit.drop_multiplier_pos == pytest.approx(inter.drop_multiplier_pos, rel=0.2)
