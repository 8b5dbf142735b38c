"""evaluation/fits.py: curve fits and their summaries.

Two kinds of expectation, neither taken from the module:
- small exact synthetic curves and hand-worked numbers (fast: each fit is a fraction of a second,
  so `scripts/mutation.sh fits` can run them per mutant): decay values worked out by hand, R^2 and
  adjusted R^2 from their formulas, the search's bounds and starts from the rules in the module
  docstring, summaries of piecewise-linear curves whose drop points, gains and frontier integrals
  are known in closed form, and leave-one-out errors from separate fits without each point;
- the paper's model with noise: continuity at m = 0, parameter recovery, goodness of fit that falls
  for the wrong model, refusal on short sweeps, summaries against hand interpolation.
"""
from __future__ import annotations

import logging
import math

import numpy as np
import pytest

from easyedit_split.evaluation.fits import (
    CurveFit, DECAY_PARAMS, FitReport, PREFERENCE_PARAMS, Summaries, UTILITY_PARAMS, _Layout, _bounds_and_starts,
    _design, _fit_points, _fit_usable, _grid, _head, _peak_excess, _reference_multiplier, _search,
    adjusted_r_squared, drop_multiplier, fit_and_summarize, fit_curve, fit_preference, fit_utility, frontier_area,
    interpolated, parameter_count, preference_curve, preference_gain, r_squared, summarize_curves, utility_curve,
    validity_decay,
)


DECAY = dict(m_pos=1.0, L_pos=2.0, p_pos=0.5, m_neg=-1.0, L_neg=4.0, p_neg=2.0)
# by hand: D(3) = ((1 + 4/2) / (1 + 1/2))^-0.5 = 2^-0.5;  D(1) = (1 / 1.5)^-0.5 = 1.5^0.5
#          D(-3) = ((1 + 4/4) / (1 + 1/4))^-2 = 1.6^-2;  D(-1) = (1 / 1.25)^-2 = 1.25^2;  D(0) = 1
M_HAND = [3.0, 1.0, 0.0, -1.0, -3.0]
D_HAND = [2 ** -0.5, 1.5 ** 0.5, 1.0, 1.25 ** 2, 1.6 ** -2]


# ----------------------------------------------------------------------------- the model


def test_validity_decay_hand_values():
    np.testing.assert_allclose(validity_decay(M_HAND, *DECAY.values()), D_HAND, rtol=1e-13)


def test_curves_hand_values():
    # PrefOdds = (alpha m + beta) D + b with alpha 2, beta 1, b -0.5; UtilOdds = 3 D + 1
    expected = [(2 * m + 1) * d - 0.5 for m, d in zip(M_HAND, D_HAND)]
    np.testing.assert_allclose(preference_curve(M_HAND, 2.0, 1.0, -0.5, *DECAY.values()), expected, rtol=1e-13)
    np.testing.assert_allclose(utility_curve(M_HAND, 3.0, 1.0, *DECAY.values()), [3 * d + 1 for d in D_HAND],
                               rtol=1e-13)


def test_curve_fit_call_uses_its_own_parameters():
    pref = CurveFit("preference", "full", dict(alpha=2.0, beta=1.0, b=-0.5, **DECAY), 9, 9, fitted=True)
    np.testing.assert_allclose(pref(M_HAND), [(2 * m + 1) * d - 0.5 for m, d in zip(M_HAND, D_HAND)], rtol=1e-13)
    util = CurveFit("utility", "full", dict(beta_u=3.0, b_u=1.0, **DECAY), 8, 8, fitted=True)
    np.testing.assert_allclose(util(M_HAND), [3 * d + 1 for d in D_HAND], rtol=1e-13)
    refused = CurveFit("utility", "none", {}, 2, 8)
    out = refused(np.zeros((2, 3)))
    assert out.shape == (2, 3) and np.isnan(out).all()


@pytest.mark.parametrize("adjusted, loo, fitted, good", [
    (0.9, 0.7, True, True), (0.95, 0.99, True, True), (0.9 - 1e-12, 0.99, True, False),
    (0.99, 0.7 - 1e-12, True, False), (float("nan"), 0.99, True, False), (0.99, float("nan"), True, False),
    (0.99, 0.99, False, False),
])
def test_a_good_fit_reaches_both_thresholds(adjusted, loo, fitted, good):
    fit = CurveFit("utility", "full", {}, 10, 8, adjusted_r2=adjusted, loo_r2=loo, fitted=fitted)
    assert fit.is_good is good


def test_curve_fit_dictionary():
    fit = CurveFit("utility", "shared", {"beta_u": 1.5, "b_u": float("nan")}, 9, 6, r2=0.5, rmse=float("inf"),
                   adjusted_r2=0.25, loo_rmse=0.75, loo_r2=float("nan"), fitted=True, message="poor",
                   at_bounds=("log_p",))
    assert fit.to_dict() == {
        "kind": "utility", "shape": "shared", "params": {"beta_u": 1.5, "b_u": None}, "n_points": 9, "n_params": 6,
        "r2": 0.5, "rmse": None, "adjusted_r2": 0.25, "loo_rmse": 0.75, "loo_r2": None, "fitted": True,
        "good": False, "message": "poor", "at_bounds": ["log_p"], "loo_message": "",
    }
    assert CurveFit("utility", "none", {}, 0, 8).to_dict()["r2"] is None
    finite = CurveFit("utility", "full", {}, 9, 8, r2=0.5, rmse=0.125, adjusted_r2=0.25, loo_rmse=0.75, loo_r2=0.375)
    data = finite.to_dict()
    assert [data[k] for k in ("r2", "rmse", "adjusted_r2", "loo_rmse", "loo_r2")] == [0.5, 0.125, 0.25, 0.75, 0.375]


def test_r_squared_by_hand():
    # SST = 2, SSE = 1
    assert r_squared([1.0, 2.0, 3.0], [1.0, 2.0, 4.0]) == 0.5
    assert r_squared([2, 2], [2, 2]) == 1.0  # constant data fitted exactly
    assert r_squared([0.0, 0.5], [0.0, 0.25]) == 0.5  # SST = 0.125, SSE = 0.0625 (a total below 1 is no special case)
    assert r_squared([2.0, 2.0], [2.0, 3.0]) == 0.0  # constant data, not fitted
    assert type(r_squared([1, 2], [1, 2])) is float


def test_adjusted_r_squared_by_hand():
    assert adjusted_r_squared(0.5, 10, 3) == pytest.approx(1 - 0.5 * 9 / 7, rel=1e-14)
    assert adjusted_r_squared(0.5, 5, 4) == pytest.approx(-1.0, rel=1e-14)  # 1 - 0.5 * 4 / 1
    assert np.isnan(adjusted_r_squared(0.5, 4, 4)) and np.isnan(adjusted_r_squared(0.5, 3, 4))


def test_parameter_counts_all_shapes():
    assert [parameter_count("preference", s) for s in ("full", "shared")] == [9, 7]
    assert [parameter_count("utility", s) for s in ("full", "shared")] == [8, 6]
    assert [parameter_count(k, "full", sides=1) for k in ("preference", "utility")] == [6, 5]
    assert parameter_count("utility", "shared", sides=2) == 6


# ----------------------------------------------------------------------------- search internals


def test_layout_names_and_expansion():
    assert _Layout("full", True, False).names == ["m_pos", "log_L", "log_p"]
    assert _Layout("shared", False, True).names == ["m_neg", "log_L", "log_p"]
    assert _Layout("shared", True, True).names == ["m_pos", "m_neg", "log_L", "log_p"]
    assert _Layout("full", True, True).names == ["m_pos", "log_L_pos", "log_p_pos", "m_neg", "log_L_neg", "log_p_neg"]
    ln = math.log
    full = _Layout("full", True, True).expand(np.array([0.5, ln(2.0), ln(3.0), -0.25, ln(5.0), ln(7.0)]))
    assert list(full) == list(DECAY_PARAMS)
    assert full == pytest.approx(dict(m_pos=0.5, L_pos=2.0, p_pos=3.0, m_neg=-0.25, L_neg=5.0, p_neg=7.0), rel=1e-14)
    assert all(type(v) is float for v in full.values())
    shared = _Layout("shared", True, True).expand(np.array([0.5, -0.25, ln(2.0), ln(3.0)]))
    assert shared == pytest.approx(dict(m_pos=0.5, L_pos=2.0, p_pos=3.0, m_neg=-0.25, L_neg=2.0, p_neg=3.0), rel=1e-14)
    one_side = _Layout("shared", False, True).expand(np.array([-0.25, ln(2.0), ln(3.0)]))
    assert one_side == pytest.approx(dict(m_pos=0.0, L_pos=2.0, p_pos=3.0, m_neg=-0.25, L_neg=2.0, p_neg=3.0),
                                     rel=1e-14)
    assert _Layout("shared", True, False).expand(np.array([0.5, 0.0, 0.0]))["m_neg"] == 0.0


def test_design_columns_and_exact_head():
    m = np.array(M_HAND)
    d = np.array(D_HAND)
    np.testing.assert_allclose(_design("preference", m, DECAY), np.stack([m * d, d, np.ones(5)], axis=1), rtol=1e-13)
    np.testing.assert_allclose(_design("utility", m, DECAY), np.stack([d, np.ones(5)], axis=1), rtol=1e-13)
    y = (2 * m + 1) * d - 0.5
    np.testing.assert_allclose(_head("preference", m, y, DECAY), [2.0, 1.0, -0.5], rtol=1e-10)
    np.testing.assert_allclose(_head("utility", m, 3 * d + 1, DECAY), [3.0, 1.0], rtol=1e-10)


def test_peak_excess_by_hand():
    # positive side: p log1p(m^2 / L) = log(1 + 9 / 0.01) = log 901 > log 100 by log 9.01; negative: log 2 < log 100
    decay = dict(m_pos=3.0, L_pos=0.01, p_pos=1.0, m_neg=-1.0, L_neg=1.0, p_neg=1.0)
    np.testing.assert_allclose(_peak_excess(decay), [math.log(9.01), 0.0], rtol=1e-12, atol=0)
    decay = dict(m_pos=1.0, L_pos=1.0, p_pos=1.0, m_neg=-3.0, L_neg=0.01, p_neg=2.0)
    np.testing.assert_allclose(_peak_excess(decay), [0.0, 2 * math.log(901) - math.log(100)], rtol=1e-12)


def test_bounds_and_starts_follow_the_rules():
    ln = math.log
    m = np.array([-2.0, -1.0, 0.0, 1.0, 3.0])  # span 5
    (low, high), starts = _bounds_and_starts(m, _Layout("shared", True, True))
    # L from (span/100)^2 to (span*10)^2, p from 0.05 to 20, centres on their own side of the range
    np.testing.assert_allclose(low, [0.0, -2.0, ln(0.05 ** 2), ln(0.05)], rtol=1e-14)
    np.testing.assert_allclose(high, [3.0, 0.0, ln(50.0 ** 2), ln(20.0)], rtol=1e-14)
    assert len(starts) == 2 * 2 * 3 * 2
    expected = {(a, b, c, d) for a in (0.0, 0.9) for b in (0.0, -0.6) for c in (ln(0.25), ln(4.0), ln(56.25))
                for d in (ln(0.7), ln(3.0))}
    assert {tuple(np.round(s, 12)) for s in starts} == {tuple(np.round(e, 12)) for e in expected}
    assert all(s.dtype == np.float64 for s in starts)
    # full shape: 144 combinations, tied to 24 (both sides start with the same L and p)
    _, starts = _bounds_and_starts(m, _Layout("full", True, True))
    assert len(starts) == 24
    assert all(s[1] == s[4] and s[2] == s[5] for s in starts)
    assert {(round(s[0], 12), round(s[3], 12)) for s in starts} == {(0.0, 0.0), (0.0, -0.6), (0.9, 0.0), (0.9, -0.6)}
    # one side: 2 x 3 x 2 starts
    (low, high), starts = _bounds_and_starts(np.array([0.5, 1.0, 2.0]), _Layout("full", True, False))
    assert len(starts) == 12 and low[0] == 0.0 and high[0] == 2.0
    assert {round(s[0], 12) for s in starts} == {0.0, 0.6}
    # sweep ending at 0: the positive centre's range [0, 0] gets a sliver of width
    (low, high), _ = _bounds_and_starts(np.array([-3.0, -1.0, 0.0]), _Layout("shared", True, True))
    assert low[0] == 0.0 and high[0] == 1e-9 and low[1] == -3.0 and high[1] == 0.0
    # a sweep of one multiplier value: span floored at 1e-6
    (low, high), _ = _bounds_and_starts(np.array([1.0, 1.0]), _Layout("shared", True, False))
    np.testing.assert_allclose([low[1], high[1]], [ln(1e-16), ln(1e-10)], rtol=1e-12)


class _Spy:
    """Wraps scipy's least_squares, recording every call's start, residual function and result."""

    def __init__(self, monkeypatch, fail=()):
        import scipy.optimize

        self.real = scipy.optimize.least_squares
        self.calls = []
        self.fail = fail
        monkeypatch.setattr(scipy.optimize, "least_squares", self)

    def __call__(self, fun, x0, **kwargs):
        index = len(self.calls)
        self.calls.append({"x0": np.array(x0), "fun": fun, "kwargs": kwargs})
        if index in self.fail or "all" in self.fail:
            raise self.fail.get(index, self.fail.get("all"))
        solution = self.real(fun, x0, **kwargs)
        self.calls[-1]["solution"] = solution
        return solution


def _one_sided_utility(n=7, noise=0.0, seed=0):
    m = np.linspace(0.5, 3.5, n)
    y = utility_curve(m, 2.0, -1.0, 1.0, 2.0, 1.0, 0.0, 1.0, 1.0)
    return m, y + np.random.default_rng(seed).normal(0.0, noise, n)


def test_search_keeps_the_best_start_and_penalises_tall_bumps(monkeypatch):
    m = np.array([-2.0, -1.0, 0.0, 1.0, 3.0, 4.0])
    y = np.array([0.5, 1.5, 2.0, 1.0, -0.5, 0.3])
    layout = _Layout("shared", True, True)
    bounds, starts = _bounds_and_starts(m, layout)
    spy = _Spy(monkeypatch)
    sse, theta = _search("utility", m, y, layout, starts[:6], bounds)
    assert len(spy.calls) == 6
    totals = [float((c["solution"].fun ** 2).sum()) for c in spy.calls]
    best = int(np.argmin(totals))
    assert len(set(np.round(totals, 9))) > 1  # the starts do end in different places
    assert sse == totals[best] and np.array_equal(theta, spy.calls[best]["solution"].x)
    assert spy.calls[0]["kwargs"]["max_nfev"] == 400
    np.testing.assert_array_equal(spy.calls[0]["kwargs"]["bounds"][0], bounds[0])
    # the residual: least-squares head residuals, then 10 sqrt(SST) x each side's excess over log(100)
    ln = math.log
    probe = np.array([3.0, -2.0, ln(0.01), ln(1.0)])  # tall bumps: log(1 + 900), log(1 + 400)
    residual = spy.calls[0]["fun"](probe)
    decay = dict(m_pos=3.0, L_pos=0.01, p_pos=1.0, m_neg=-2.0, L_neg=0.01, p_neg=1.0)
    d = validity_decay(m, *decay.values())
    design = np.stack([d, np.ones_like(m)], axis=1)
    head = np.linalg.lstsq(design, y, rcond=None)[0]
    weight = 10.0 * math.sqrt(((y - y.mean()) ** 2).sum())
    np.testing.assert_allclose(residual[:6], design @ head - y, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(residual[6:], [weight * ln(9.01), weight * ln(4.01)], rtol=1e-12)


def test_search_weight_has_a_floor_for_constant_data(monkeypatch):
    m = np.array([-1.0, 0.0, 1.0, 2.0])
    layout = _Layout("shared", True, True)
    bounds, starts = _bounds_and_starts(m, layout)
    spy = _Spy(monkeypatch)
    _search("utility", m, np.full(4, 2.0), layout, starts[:1], bounds)
    residual = spy.calls[0]["fun"](np.array([3.0, 0.0, math.log(0.01), 0.0]))
    np.testing.assert_allclose(residual[4:], [10.0 * 1e-6 * (math.log(901) - math.log(100)), 0.0], rtol=1e-9)


@pytest.mark.parametrize("error", [ValueError("bad"), np.linalg.LinAlgError("singular")])
def test_failing_starts_are_skipped_and_all_failing_refuses(monkeypatch, caplog, error):
    m, y = _one_sided_utility()
    _Spy(monkeypatch, fail={0: error, 1: error})
    fit = fit_curve("utility", m, y, leave_one_out=False)
    assert fit.fitted and fit.r2 > 0.999999
    _Spy(monkeypatch, fail={"all": error})
    with caplog.at_level(logging.WARNING, logger="easyedit_split.evaluation.fits"):
        fit = fit_curve("utility", m, y)
    assert not fit.fitted and fit.shape == "none" and fit.kind == "utility"
    assert fit.message == "not fitted: the least-squares search failed from every start"
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        "utility fit not fitted: the least-squares search failed from every start"]
    assert list(fit.params) == list(UTILITY_PARAMS) and all(np.isnan(v) for v in fit.params.values())
    assert (fit.n_points, fit.n_params) == (7, 5)


def test_search_without_a_finite_result_is_none(monkeypatch):
    import scipy.optimize

    class Bad:
        fun = np.array([np.nan])
        x = np.zeros(3)

    monkeypatch.setattr(scipy.optimize, "least_squares", lambda *a, **k: Bad())
    m, y = _one_sided_utility()
    layout = _Layout("full", True, False)
    bounds, starts = _bounds_and_starts(m, layout)
    assert _search("utility", m, y, layout, starts, bounds) is None


def test_warm_start_comes_first_then_every_twelfth_start(monkeypatch):
    m = np.array([-2.0, -1.0, 0.0, 1.0, 3.0, 4.0, 5.0, 6.0])
    y = utility_curve(m, 3.0, -1.0, 0.5, 2.0, 1.0, -0.5, 2.0, 1.0)
    layout = _Layout("shared", True, True)
    _, starts = _bounds_and_starts(m, layout)
    warm = np.array([0.4, -0.4, math.log(2.0), 0.0])
    spy = _Spy(monkeypatch)
    theta, head, bounds = _fit_points("utility", m, y, layout, warm_start=warm)
    assert len(spy.calls) == 1 + 2  # 24 default starts: the 1st and the 13th
    np.testing.assert_array_equal(spy.calls[0]["x0"], warm)
    np.testing.assert_array_equal(spy.calls[1]["x0"], starts[0])
    np.testing.assert_array_equal(spy.calls[2]["x0"], starts[12])
    decay = layout.expand(theta)
    np.testing.assert_allclose(head, np.linalg.lstsq(_design("utility", m, decay), y, rcond=None)[0], rtol=1e-10)
    np.testing.assert_allclose(utility_curve(m, *head, *decay.values()), y, atol=1e-5)
    assert bounds[0].shape == (4,)
    spy.calls.clear()
    _fit_points("utility", m, y, layout)
    assert len(spy.calls) == 24
    # a warm start outside the search bounds (a refit without an end point narrows them) is clipped into them
    spy.calls.clear()
    _fit_points("utility", m, y, layout, warm_start=np.array([10.0, -10.0, 50.0, -50.0]))
    low, high = spy.calls[0]["kwargs"]["bounds"]
    np.testing.assert_array_equal(spy.calls[0]["x0"], [high[0], low[1], high[2], low[3]])


# ----------------------------------------------------------------------------- fit_curve


def test_fit_curve_argument_errors_are_exact():
    with pytest.raises(ValueError) as info:
        fit_curve("pref", [0, 1], [0, 1])
    assert str(info.value) == "fit kind must be 'preference' or 'utility', got 'pref'"
    with pytest.raises(ValueError) as info:
        fit_curve("utility", [0, 1], [0, 1], shape="half")
    assert str(info.value) == "fit shape must be one of ('auto', 'full', 'shared'), got 'half'"
    with pytest.raises(ValueError) as info:
        fit_curve("preference", [0, 1, 2], [0, 1])
    assert str(info.value) == "preference fit: 3 multipliers but 2 values"


@pytest.mark.parametrize("kind, m, shape, expected", [
    # two sides, 9 points: utility full needs 8 + 2 = 10 -> shared (6 parameters, needs 8): fits
    ("utility", [-1, 0, 1, 2], "auto", "not fitted: 4 finite points, the shared utility model has 6 parameters "
                                       "and needs at least 8 (use more multipliers)"),
    ("preference", [-1, 0, 1, 2, 3, 4, 5, 6], "auto", "not fitted: 8 finite points, the shared preference model has "
                                                     "7 parameters and needs at least 9 (use more multipliers)"),
    ("utility", [-1, 0, 1, 2, 3, 4, 5, 6, 7], "full", "not fitted: 9 finite points, the full utility model has 8 "
                                                     "parameters and needs at least 10 (use more multipliers)"),
    ("utility", [1, 2, 3, 4, 5, 6], "auto", "not fitted: 6 finite points, the shared utility model has 5 parameters "
                                            "and needs at least 7 (use more multipliers)"),
])
def test_short_sweeps_are_refused_with_the_counts(kind, m, shape, expected, caplog):
    with caplog.at_level(logging.WARNING, logger="easyedit_split.evaluation.fits"):
        fit = fit_curve(kind, m, np.linspace(0.0, 1.0, len(m)), shape=shape)
    assert not fit.fitted and fit.shape == "none" and fit.message == expected
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [expected]
    assert fit.n_points == len(m) and fit.n_params == int(expected.split(" parameters")[0].split()[-1])
    assert list(fit.params) == list(PREFERENCE_PARAMS if kind == "preference" else UTILITY_PARAMS)


def test_zero_counts_on_the_positive_side():
    """m >= 0 is the positive side: a sweep ending at 0 has two sides, one starting at 0 has one."""
    down = np.linspace(-3.0, 0.0, 7)
    fit = fit_curve("utility", down, 0.1 * down ** 2)
    assert not fit.fitted and "shared utility model has 6 parameters and needs at least 8" in fit.message
    up = np.linspace(0.0, 3.0, 7)
    fit = fit_curve("utility", up, utility_curve(up, 2.0, -1.0, 1.0, 2.0, 1.0, 0.0, 1.0, 1.0), leave_one_out=False)
    assert fit.fitted and fit.n_params == 5 and fit.r2 > 0.999999


def test_a_narrow_two_sided_sweep_fits_both_sides():
    # all |m| < 1, centres off zero on both sides: both sides need their own centre
    m = np.linspace(-0.9, 0.9, 8)
    y = utility_curve(m, 3.0, -1.0, 0.3, 0.2, 1.0, -0.3, 0.2, 1.0)
    fit = fit_curve("utility", m, y, leave_one_out=False)
    assert fit.shape == "shared" and fit.n_params == 6 and fit.r2 > 0.99999


def test_auto_shape_counts_the_preference_head():
    # preference "full" has 9 parameters: 10 points are one short, so "shared" (7)
    m = np.linspace(-2.0, 2.0, 10)
    fit = fit_preference(m, preference_curve(m, 1.0, 0.5, -0.2, 0.5, 2.0, 1.0, -0.5, 2.0, 1.0))
    assert fit.shape == "shared" and fit.n_params == 7 and fit.fitted


def test_no_finite_points_is_refused():
    fit = fit_curve("utility", [1.0, 2.0], [np.nan, np.nan])
    assert not fit.fitted and fit.n_points == 0
    assert fit.message.startswith("not fitted: 0 finite points")
    assert fit_preference([np.nan, 1.0], [1.0, np.nan]).n_points == 0  # non-finite multipliers are dropped too


def test_one_sided_sweep_fits_at_the_minimum_point_count():
    m, y = _one_sided_utility(7)
    fit = fit_curve("utility", m, y, leave_one_out=False)
    assert fit.fitted and fit.shape == "full" and fit.n_params == 5 and fit.n_points == 7
    assert list(fit.params) == list(UTILITY_PARAMS) and all(type(v) is float for v in fit.params.values())
    assert fit.params["m_pos"] == pytest.approx(1.0, abs=1e-3)
    grid = np.linspace(0.5, 3.5, 31)
    np.testing.assert_allclose(fit(grid), utility_curve(grid, 2.0, -1.0, 1.0, 2.0, 1.0, 0.0, 1.0, 1.0), atol=1e-5)
    assert np.isnan(fit.loo_rmse) and np.isnan(fit.loo_r2)  # leave_one_out=False
    assert fit.message.startswith("poor fit")  # without leave-one-out it cannot be called good
    # one NaN value among 8 points leaves the same 7
    fit8 = fit_curve("utility", np.append(m, 4.0), np.append(y, np.nan), leave_one_out=False)
    assert fit8.n_points == 7 and fit8.fitted


def test_auto_shape_takes_full_from_k_plus_two_points():
    m = np.linspace(-2.0, 2.0, 10)
    y = utility_curve(m, 3.0, -1.0, 0.5, 2.0, 1.0, -0.5, 3.0, 2.0)
    full = fit_curve("utility", m, y, leave_one_out=False)
    assert full.shape == "full" and full.n_params == 8 and full.fitted
    shared = fit_curve("utility", m[1:], y[1:], leave_one_out=False)
    assert shared.shape == "shared" and shared.n_params == 6 and shared.fitted


def test_goodness_of_fit_numbers_follow_their_formulas():
    m, y = _one_sided_utility(8, noise=0.3, seed=1)
    with_loo = fit_curve("utility", m, y)
    assert not with_loo.is_good and np.isfinite(with_loo.loo_r2)
    assert with_loo.message == (f"poor fit (adjusted R^2 {with_loo.adjusted_r2:.3f}, leave-one-out R^2 "
                                f"{with_loo.loo_r2:.3f}; good needs 0.9 and 0.7)")
    fit = fit_curve("utility", m, y, leave_one_out=False)
    predicted = fit(m)
    sse, sst = ((y - predicted) ** 2).sum(), ((y - y.mean()) ** 2).sum()
    assert fit.r2 == pytest.approx(1 - sse / sst, rel=1e-12)
    assert fit.rmse == pytest.approx(math.sqrt(sse / 8), rel=1e-12)
    assert fit.adjusted_r2 == pytest.approx(1 - (sse / sst) * 7 / 3, rel=1e-12)
    assert 0 < fit.r2 < 0.999
    assert fit.message == (f"poor fit (adjusted R^2 {fit.adjusted_r2:.3f}, leave-one-out R^2 n/a; "
                           "good needs 0.9 and 0.7)")


def test_leave_one_out_predicts_each_point_from_a_fit_without_it():
    m, y = _one_sided_utility(8, noise=0.05, seed=2)
    fit = fit_curve("utility", m, y)
    errors = []
    for i in range(8):
        rest = np.arange(8) != i
        without = fit_curve("utility", m[rest], y[rest], leave_one_out=False)
        errors.append(float(without(m[i:i + 1])[0]) - y[i])
    errors = np.array(errors)
    assert fit.loo_rmse == pytest.approx(math.sqrt(np.mean(errors ** 2)), rel=1e-3)
    assert fit.loo_r2 == pytest.approx(1 - (errors ** 2).sum() / ((y - y.mean()) ** 2).sum(), rel=1e-3)
    assert fit.loo_rmse > 1e-3


def test_leave_one_out_of_data_with_a_small_spread_has_an_r2():
    m = np.linspace(0.5, 3.5, 8)
    y = 0.01 * utility_curve(m, 2.0, -1.0, 1.0, 2.0, 1.0, 0.0, 1.0, 1.0) + np.random.default_rng(2).normal(0, 5e-4, 8)
    assert ((y - y.mean()) ** 2).sum() < 1e-3
    fit = fit_curve("utility", m, y)
    assert 0.5 < fit.loo_r2 < 1.0


def test_leave_one_out_of_constant_data_has_no_r2():
    m = np.linspace(0.5, 3.5, 8)   # one-sided k = 5: refits of 7 points reach k + 2
    fit = fit_curve("utility", m, np.full(8, 2.0))
    assert fit.fitted and fit.r2 == 1.0
    assert fit.loo_rmse == pytest.approx(0.0, abs=1e-6) and np.isnan(fit.loo_r2)


def test_parameters_on_a_search_bound_are_reported_but_centres_are_not():
    # 1 - log(1 + (m - 1)^2 / 2) is the p -> 0 limit of the model: p ends on its lower bound;
    # a straight line puts m_pos on its bound 0 too, which is not reported (centres are bounded by the data)
    m = np.linspace(0.5, 3.5, 7)
    fit = fit_curve("utility", m, 1.0 - np.log1p((m - 1.0) ** 2 / 2.0), leave_one_out=False)
    assert fit.at_bounds == ("log_p",) and fit.params["p_pos"] == pytest.approx(0.05, rel=1e-5)
    line = fit_curve("utility", m, 1.0 - 0.1 * m, leave_one_out=False)
    assert line.params["m_pos"] == pytest.approx(0.0, abs=1e-9) and "m_pos" not in line.at_bounds
    gaussian = fit_curve("utility", m, np.exp(-(m - 1.0) ** 2), leave_one_out=False)
    assert gaussian.at_bounds == ("log_p",) and gaussian.params["p_pos"] == pytest.approx(20.0, rel=1e-5)
    good = fit_curve("utility", *_one_sided_utility(7), leave_one_out=False)
    assert good.at_bounds == ()


def test_fit_preference_and_fit_utility_name_their_kind_and_pass_the_shape():
    m = [-1, 0, 1, 2, 3, 4, 5, 6, 7]
    pref = fit_preference(m, np.zeros(9), shape="full")
    assert pref.kind == "preference" and pref.n_params == 9 and "full preference" in pref.message
    util = fit_utility(m, np.zeros(9), shape="full")
    assert util.kind == "utility" and util.n_params == 8 and "full utility" in util.message
    # default shape "auto": 5 points on two sides are too few for "full", so "shared"
    assert "shared preference model has 7" in fit_preference(m[:5], np.zeros(5)).message
    assert "shared utility model has 6" in fit_utility(m[:5], np.zeros(5)).message


# ----------------------------------------------------------------------------- summaries

# P(m) = m + 0.5, U(m) = 1 - |m| on [-2, 3]: loss |m|, so the drop points are +-delta, the gain is
# min(delta, 3) (the positive side runs out at 3), and the frontier integral is delta^2 / 2 up to 3
SWEEP = np.array([-2.0, 0.0, 3.0])
PREF = interpolated(SWEEP, SWEEP + 0.5)
UTIL = interpolated(SWEEP, 1.0 - np.abs(SWEEP))


def test_interpolated_sorts_and_drops_missing_points():
    curve = interpolated([2.0, -1.0, 0.0, 1.0], [4.0, np.nan, 0.0, 1.0])
    np.testing.assert_allclose(curve(np.array([0.5, 1.5, -1.0, 5.0])), [0.5, 2.5, 0.0, 4.0])


def test_grid_and_reference_multiplier():
    grid = _grid([1.0, 1.2345, 3.0])
    assert grid.size == 2002 and grid[0] == 1.0 and grid[-1] == 3.0 and 1.2345 in grid and 0.0 not in grid
    assert _grid([1.0, 3.0]).size == 2001
    assert _grid([1.0, 3.0], points=11).size == 11
    assert 0.0 in _grid([-1.3, 2.9]) and _grid([-1.3, 2.9]).size == 2002
    assert _grid([0.0, 2.0]).size == 2001 and _grid([-2.0, 0.0]).size == 2001
    assert _reference_multiplier([-1.0, 2.0]) == 0.0 and _reference_multiplier([0.0, 2.0]) == 0.0
    assert _reference_multiplier([-2.0, 0.0]) == 0.0
    assert _reference_multiplier([3.0, 1.5, 2.0]) == 1.5 and _reference_multiplier([-4.0, -0.5]) == -0.5
    assert _reference_multiplier([0.5, 1.0, 3.0]) == 0.5  # a range holding 1 but not 0


def test_drop_multiplier_by_hand():
    assert drop_multiplier(UTIL, SWEEP, 0.9991) == pytest.approx(0.9991, rel=1e-12)   # between grid points
    assert drop_multiplier(UTIL, SWEEP, 0.9991, -1) == pytest.approx(-0.9991, rel=1e-12)
    assert drop_multiplier(UTIL, SWEEP, 1.0) == pytest.approx(1.0, rel=1e-12)
    assert drop_multiplier(UTIL, SWEEP, 2.5) == pytest.approx(2.5, rel=1e-12)
    assert drop_multiplier(UTIL, SWEEP, 2.5, -1) is None  # the negative side only loses 2
    assert drop_multiplier(UTIL, SWEEP, 0.0) == 0.0       # reached at once
    assert drop_multiplier(UTIL, SWEEP, 0.0, -1) == 0.0
    # inside the first grid step (0.0025 wide) on either side
    assert drop_multiplier(UTIL, SWEEP, 0.001) == pytest.approx(0.001, rel=1e-9)
    assert drop_multiplier(UTIL, SWEEP, 0.001, -1) == pytest.approx(-0.001, rel=1e-9)
    # a step down between two grid points: the refinement lands on the matching fraction of the step
    step = lambda q: np.where(np.asarray(q) > 1.00001, -2.0, 0.0)  # noqa: E731
    grid = _grid(SWEEP)
    below, above = grid[grid <= 1.00001].max(), grid[grid > 1.00001].min()
    assert drop_multiplier(step, SWEEP, 0.5) == pytest.approx(below + 0.25 * (above - below), rel=1e-12)
    mirror = lambda q: np.where(np.asarray(q) < -1.00001, -2.0, 0.0)  # noqa: E731
    inner, outer = grid[grid >= -1.00001].min(), grid[grid < -1.00001].max()
    assert drop_multiplier(mirror, SWEEP, 0.5, -1) == pytest.approx(inner + 0.25 * (outer - inner), rel=1e-12)
    # a sweep that does not contain 0: losses are relative to the multiplier nearest 0
    shifted = [1.0, 3.0]
    util = interpolated(shifted, [0.0, -2.0])
    assert drop_multiplier(util, shifted, 1.0) == pytest.approx(2.0, rel=1e-12)
    assert drop_multiplier(util, shifted, 1.0, -1) is None


def test_preference_gain_by_hand():
    assert preference_gain(PREF, UTIL, SWEEP, 0.9991) == pytest.approx(0.9991, rel=1e-12)  # at the drop point
    assert preference_gain(PREF, UTIL, SWEEP, 1.0) == pytest.approx(1.0, rel=1e-12)
    assert preference_gain(PREF, UTIL, SWEEP, 5.0) == pytest.approx(3.0, rel=1e-12)  # the whole range
    down = interpolated(SWEEP, 0.5 - SWEEP)  # gains on the negative side
    assert preference_gain(down, UTIL, SWEEP, 1.5) == pytest.approx(1.5, rel=1e-12)
    assert preference_gain(down, UTIL, SWEEP, 0.9991) == pytest.approx(0.9991, rel=1e-12)  # at the drop point
    assert preference_gain(down, UTIL, SWEEP, 5.0) == pytest.approx(2.0, rel=1e-12)
    flat = interpolated(SWEEP, [1.0, 1.0, 1.0])
    assert preference_gain(flat, UTIL, SWEEP, 1.0) == 0.0
    # a utility that dips and recovers: the interval stops at the first drop on each side
    dip = interpolated([-2.0, 0.0, 1.0, 2.0, 3.0], [0.0, 0.0, -2.0, 0.0, 0.0])
    assert preference_gain(PREF, dip, [-2.0, 0.0, 1.0, 2.0, 3.0], 1.0) == pytest.approx(0.5, rel=1e-9)
    sweep = [-3.0, -2.0, -1.0, 0.0, 2.0]
    dip = interpolated(sweep, [0.0, 0.0, -2.0, 0.0, 0.0])
    assert preference_gain(interpolated(sweep, [3.0, 2.0, 1.0, 0.0, -2.0]), dip, sweep, 1.0) == pytest.approx(0.5)
    # the best preference strictly inside the interval [-1, 1]: a hump of 1 at m = 0.5
    hump = interpolated([-2.0, 0.0, 0.5, 3.0], [0.0, 0.0, 1.0, 0.0])
    assert preference_gain(hump, UTIL, SWEEP, 1.0) == pytest.approx(1.0, rel=1e-12)
    # a utility curve without values (a refused fit) gives no gain
    refused = CurveFit("utility", "none", {}, 0, 8)
    assert preference_gain(PREF, refused, SWEEP, 1.0) == 0.0


def test_frontier_area_is_the_trapezoid_integral_of_the_gain():
    assert frontier_area(PREF, UTIL, SWEEP, 2.0) == pytest.approx(2.0, rel=1e-12)  # integral_0^2 d = 2
    # past 3 the gain stays 3; with the kink off the 201-point grid the trapezoid sum is not exact
    losses = np.linspace(0.0, 4.01, 201)
    gains = np.minimum(losses, 3.0)
    expected = float(np.sum((gains[1:] + gains[:-1]) / 2 * np.diff(losses)))
    assert expected != pytest.approx(4.5 + 3 * 1.01, rel=1e-9)
    assert frontier_area(PREF, UTIL, SWEEP, 4.01) == pytest.approx(expected, rel=1e-12)
    losses = np.linspace(0.0, 4.01, 5)
    gains = np.minimum(losses, 3.0)
    expected = float(np.sum((gains[1:] + gains[:-1]) / 2 * np.diff(losses)))
    assert frontier_area(PREF, UTIL, SWEEP, 4.01, points=5) == pytest.approx(expected, rel=1e-12)


def test_summarize_curves_by_hand_and_defaults():
    s = summarize_curves(PREF, UTIL, SWEEP, "interpolation")
    assert s.source == "interpolation" and s.utility_loss == 1.0 and s.frontier_max_loss == 3.0
    assert s.preference_gain == pytest.approx(1.0) and s.drop_multiplier_pos == pytest.approx(1.0)
    assert s.drop_multiplier_neg == pytest.approx(-1.0)
    assert s.frontier_area == pytest.approx(4.5, rel=1e-12)  # integral_0^3 d = 4.5
    assert s.preference_at_0 == 0.5 and s.utility_at_0 == 1.0
    s = summarize_curves(PREF, UTIL, SWEEP, "fit", utility_loss=2, frontier_max_loss=1)
    assert s.source == "fit" and s.utility_loss == 2.0 and type(s.utility_loss) is float
    assert s.preference_gain == pytest.approx(2.0) and s.drop_multiplier_neg == pytest.approx(-2.0)
    assert s.frontier_area == pytest.approx(0.5, rel=1e-12) and s.frontier_max_loss == 1.0
    assert s.drop_multiplier_pos == pytest.approx(2.0)
    shifted = summarize_curves(interpolated([1.0, 3.0], [5.0, 7.0]), interpolated([1.0, 3.0], [-1.0, -3.0]),
                               [1.0, 3.0], "interpolation")
    assert shifted.preference_at_0 == 5.0 and shifted.utility_at_0 == -1.0  # at the multiplier nearest 0


def test_summaries_dictionary():
    s = Summaries("fit", 1.0, None, 2.0, None, float("nan"), 3.0, 0.5, float("-inf"))
    assert s.to_dict() == {"source": "fit", "utility_loss": 1.0, "preference_gain": None,
                           "drop_multiplier_pos": 2.0, "drop_multiplier_neg": None, "frontier_area": None,
                           "frontier_max_loss": 3.0, "preference_at_0": 0.5, "utility_at_0": None}


def test_fit_report_headline_prefers_the_fit():
    interp = Summaries("interpolation", 1.0, 1.0, 1.0, -1.0, 4.5, 3.0, 0.5, 1.0)
    fitted = Summaries("fit", 1.0, 2.0, 1.0, -1.0, 4.5, 3.0, 0.5, 1.0)
    refused = CurveFit("utility", "none", {}, 2, 8, message="m")
    report = FitReport(refused, refused, {"interpolation": interp}, "why")
    assert report.headline is interp
    report.summaries["fit"] = fitted   # a fit shown beside does not become the headline while there is a reason
    assert report.headline is interp and report.to_dict()["headline_source"] == "interpolation"
    del report.summaries["fit"]
    data = report.to_dict()
    assert data["headline_source"] == "interpolation" and data["headline_reason"] == "why"
    assert data["summaries"] == {"interpolation": interp.to_dict()}
    assert data["preference"] == refused.to_dict() and data["utility"]["kind"] == "utility"
    assert set(data) == {"preference", "utility", "summaries", "headline_source", "headline_reason", "x_axis", "x_scale"}
    assert (data["x_axis"], data["x_scale"]) == ("multiplier", 1.0)
    report.summaries["fit"] = fitted
    report.headline_reason = ""
    assert report.headline is fitted and report.to_dict()["headline_source"] == "fit"


def _good(kind, rmse=0.1, n=11, at_bounds=()):
    return CurveFit(kind, "full", {}, n, 8, rmse=rmse, adjusted_r2=0.95, loo_r2=0.8, fitted=True, at_bounds=at_bounds)


def test_fit_usable_reasons_are_exact():
    refused = CurveFit("preference", "none", {}, 2, 9, message="not fitted: few")
    assert _fit_usable(refused, _good("utility"), 1.0) == "preference: not fitted: few"
    poor = CurveFit("utility", "full", {}, 11, 8, rmse=0.1, adjusted_r2=0.5, loo_r2=0.8, fitted=True, message="poor")
    assert _fit_usable(_good("preference"), poor, 1.0) == "utility: poor"
    assert _fit_usable(_good("preference"), CurveFit("utility", "none", {}, 2, 8, message="m"), 1.0) == "utility: m"
    assert _fit_usable(_good("preference"), _good("utility", 0.25), 1.0) == ""  # exactly at 0.25 x the budget
    assert _fit_usable(_good("preference"), _good("utility", 0.5), 2.0) == ""
    assert _fit_usable(_good("preference"), _good("utility", 0.3), 1.0) == (
        "utility fit RMSE 0.3 exceeds 0.25 x the utility-loss budget 1 (too coarse for the summaries)")
    assert _fit_usable(_good("preference"), _good("utility", float("nan")), 1.0).startswith("utility fit RMSE nan")
    # fewer than 3 residual degrees of freedom, or a parameter on a bound: interpolation, even for good fits
    assert _fit_usable(_good("preference", n=10), _good("utility"), 1.0) == (
        "preference: only 2 residual degrees of freedom (10 points, k=8); the headline needs 3")
    assert _fit_usable(_good("preference"), _good("utility", at_bounds=("log_p_pos",)), 1.0) == (
        "utility: log_p_pos on a bound of the search (the fit is not determined)")
    assert _fit_usable(_good("preference", n=12), _good("utility", n=11), 1.0) == ""


def test_fit_and_summarize_uses_good_fits_and_passes_its_settings(caplog):
    m = np.linspace(-2.0, 2.0, 11)  # enough for "full" under "auto": "shared" is the caller's choice
    decay = (0.5, 2.0, 1.0, -0.5, 2.0, 1.0)
    pref, util = preference_curve(m, 1.0, 0.5, -0.2, *decay), utility_curve(m, 3.0, -1.0, *decay)
    report = fit_and_summarize(list(m), pref, util, utility_loss=0.5, frontier_max_loss=1.0, shape="shared")
    assert report.preference.shape == "shared" and report.utility.shape == "shared"
    assert report.preference.kind == "preference" and report.utility.kind == "utility"
    assert report.headline_reason == "" and report.headline.source == "fit"
    assert set(report.summaries) == {"interpolation", "fit"}
    hand = summarize_curves(interpolated(m, pref), interpolated(m, util), m, "interpolation", 0.5, 1.0)
    assert report.summaries["interpolation"] == hand
    fit = report.summaries["fit"]
    assert fit.utility_loss == 0.5 and fit.frontier_max_loss == 1.0
    assert fit.preference_at_0 == pytest.approx(0.3, abs=1e-6) and fit.utility_at_0 == pytest.approx(2.0, abs=1e-6)
    assert report.preference.loo_rmse < 1e-3 and report.utility.loo_rmse < 1e-3  # exact curves: each point predicted
    # too few points: both refused, interpolation only, and the reason says which fit and why
    with caplog.at_level(logging.INFO, logger="easyedit_split.evaluation.fits"):
        short = fit_and_summarize(m[:4], pref[:4], util[:4])
    assert set(short.summaries) == {"interpolation"} and short.headline.source == "interpolation"  # nothing fitted
    assert short.headline_reason == "preference: " + short.preference.message
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.INFO] == [
        "summaries from interpolation: " + short.headline_reason]
    assert short.summaries["interpolation"].utility_loss == 1.0 and short.summaries["interpolation"].frontier_max_loss == 3.0


def test_leave_one_out_refits_start_from_the_full_fit(monkeypatch):
    """Shared two-sided fit of 9 points with one negative multiplier: the full fit searches from the 24
    default starts; each refit keeping both sides starts from the full fit's parameters plus every twelfth
    default start (1 + 2); leaving out the only negative point changes the layout to one side, so that
    refit starts cold from its 12 defaults. 24 + 8 x 3 + 12 = 60 searches."""
    m = np.array([-0.5, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0])
    y = utility_curve(m, 2.0, -1.0, 1.0, 2.0, 1.0, -0.5, 2.0, 1.0)
    spy = _Spy(monkeypatch)
    fit = fit_curve("utility", m, y, shape="shared")
    assert fit.fitted and fit.shape == "shared"
    assert len(spy.calls) == 60
    main_theta = spy.calls[int(np.argmin([(c["solution"].fun ** 2).sum() for c in spy.calls[:24]]))]["solution"].x
    # the first refit (point 0 left out) is the one-sided one: 12 cold starts of 3 parameters
    assert [len(c["x0"]) for c in spy.calls[24:36]] == [3] * 12
    # the next refit starts from the full fit's parameters (clipped into its bounds)
    np.testing.assert_array_equal(spy.calls[36]["x0"], np.clip(main_theta, *spy.calls[36]["kwargs"]["bounds"]))
    assert [len(c["x0"]) for c in spy.calls[36:]] == [4] * 24


def test_failed_leave_one_out_refits_give_no_loo_numbers(monkeypatch):
    m, y = _one_sided_utility(8)
    spy = _Spy(monkeypatch, fail={i: ValueError("refit") for i in range(12, 40)})
    fit = fit_curve("utility", m, y)
    assert len(spy.calls) == 12 + 2  # the full fit, then the first refit's two starts both fail
    assert fit.fitted and fit.r2 > 0.999999
    assert np.isnan(fit.loo_rmse) and np.isnan(fit.loo_r2) and fit.loo_message.startswith("leave-one-out failed")


DECAY_TRUTH = dict(m_pos=1.0, L_pos=20.0, p_pos=1.5, m_neg=-0.5, L_neg=10.0, p_neg=1.0)
UTILITY_TRUTH = dict(beta_u=4.0, b_u=-3.0, **DECAY_TRUTH)
PREFERENCE_TRUTH = dict(alpha=1.0, beta=0.5, b=-0.2, **DECAY_TRUTH)


def _g(m, centre, scale, power):
    return (1 + (m - centre) ** 2 / scale) ** -power


def test_validity_decay_is_normalised_rational_quadratic_per_side():
    m = np.array([-2.0, 3.0])
    expected = [_g(-2.0, -0.5, 10.0, 1.0) / _g(0.0, -0.5, 10.0, 1.0), _g(3.0, 1.0, 20.0, 1.5) / _g(0.0, 1.0, 20.0, 1.5)]
    np.testing.assert_allclose(validity_decay(m, *DECAY_TRUTH.values()), expected, rtol=1e-12)


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


@pytest.mark.slow
def test_centres_stay_on_their_own_side():
    m = np.linspace(-8, 8, 17)
    for seed in range(3):
        fit = fit_preference(m, _noisy(preference_curve, PREFERENCE_TRUTH, m, 0.3, seed))
        assert 0.0 <= fit.params["m_pos"] <= 8.0 and -8.0 <= fit.params["m_neg"] <= 0.0


@pytest.mark.slow
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
PREF_LINE = interpolated(MULTIPLIERS, MULTIPLIERS)
UTIL_TENT = interpolated(MULTIPLIERS, -np.abs(MULTIPLIERS))


def test_drop_multiplier_both_directions():
    assert drop_multiplier(UTIL_TENT, MULTIPLIERS, 1.5, +1) == pytest.approx(1.5)
    assert drop_multiplier(UTIL_TENT, MULTIPLIERS, 1.5, -1) == pytest.approx(-1.5)
    assert drop_multiplier(UTIL_TENT, MULTIPLIERS, 5.0, +1) is None  # never within the swept range


def test_preference_gain_at_utility_loss():
    assert preference_gain(PREF_LINE, UTIL_TENT, MULTIPLIERS, 1.0) == pytest.approx(1.0, abs=1e-3)
    assert preference_gain(PREF_LINE, UTIL_TENT, MULTIPLIERS, 2.5) == pytest.approx(2.5, abs=1e-3)
    assert preference_gain(PREF_LINE, UTIL_TENT, MULTIPLIERS, 10.0) == pytest.approx(4.0)  # capped by the range


def test_frontier_area():
    # gain(delta) = delta for delta <= 4: area up to 3 = 3^2 / 2
    assert frontier_area(PREF_LINE, UTIL_TENT, MULTIPLIERS, 3.0) == pytest.approx(4.5, abs=1e-2)


def test_frontier_area_on_a_piecewise_linear_case_by_hand():
    # P rises 0 -> 2 on [0, 1] then 2 -> 3 on [1, 2]; U loses 0.5 on [0, 1] then 2 more on [1, 2].
    # gain(d) = 4d for d <= 0.5, then 2 + (d - 0.5)/2 up to d = 2.5: area to 2 = 0.5 + (2 + 2.75)/2 * 1.5
    m = np.array([-1.0, 0.0, 1.0, 2.0])
    pref = interpolated(m, [0.0, 0.0, 2.0, 3.0])
    util = interpolated(m, [-10.0, 0.0, -0.5, -2.5])
    assert frontier_area(pref, util, m, 2.0, points=401) == pytest.approx(0.5 + 4.75 / 2 * 1.5, abs=2e-3)


@pytest.mark.slow
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


@pytest.mark.slow
def test_poor_fit_reports_interpolation():
    m = np.linspace(-8, 8, 17)
    report = fit_and_summarize(m, m, 2.0 * np.sin(1.7 * m))
    assert report.headline.source == "interpolation"
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
    # (9 points leave the shared preference fit 2 residual degrees of freedom: that reason comes first)
    assert report.headline.source == "interpolation" and "residual degrees of freedom" in report.headline_reason
    # by hand: preference falls left of 0, so the gain is on the right, where U falls 2.4 over [0, 1]:
    # loss 1 is reached at m = 1/2.4, where P = 3/2.4 = 1.25
    assert report.headline.preference_gain == pytest.approx(1.25, abs=1e-3)
    assert report.headline.frontier_area > 1.0


@pytest.mark.slow
def test_bump_height_is_bounded_so_wrong_model_predictions_stay_finite():
    # without the bound, a far centre with a tiny L makes D astronomically large between the points
    m = np.linspace(-8, 8, 9)
    fit = fit_utility(m, 2.0 * np.sin(1.7 * m) + _noisy(lambda x: 0 * x, {}, m, 0.05, 0))
    assert fit.loo_rmse < 10.0                    # the data's amplitude is 2
    for side in ("pos", "neg"):
        height = (1 + fit.params[f"m_{side}"] ** 2 / fit.params[f"L_{side}"]) ** fit.params[f"p_{side}"]
        assert height <= 100.0 * 1.05


# ----------------------------------------------------------------------------- issue 22: LOO rule, headline rule


def test_leave_one_out_is_refused_when_a_refit_would_have_fewer_than_k_plus_two_points(monkeypatch):
    """The demo's 9-point sweep: shared preference k = 7, so each refit (8 points) is refused (8 < 9),
    no refit is searched, the fit stays, and the reason is recorded and carried into the message."""
    m = np.linspace(-8, 8, 9)
    y = preference_curve(m, 1.0, 0.5, -0.2, *DECAY_TRUTH.values())
    spy = _Spy(monkeypatch)
    fit = fit_curve("preference", m, y)
    assert fit.fitted and fit.shape == "shared" and fit.n_params == 7
    n_main = len(spy.calls)
    assert n_main == len(_bounds_and_starts(m, _Layout("shared", True, True))[1])  # no refits searched
    assert np.isnan(fit.loo_rmse) and np.isnan(fit.loo_r2) and not fit.is_good
    assert fit.loo_message == ("leave-one-out refused: each refit would have 8 points for k=7 parameters and "
                               "needs at least 9 (use more multipliers)")
    assert fit.loo_message in fit.message and fit.to_dict()["loo_message"] == fit.loo_message
    # one more point: the refits run (n - 1 = 9 = k + 2)
    m10 = np.linspace(-8, 8, 10)
    fit10 = fit_curve("preference", m10, preference_curve(m10, 1.0, 0.5, -0.2, *DECAY_TRUTH.values()), shape="shared")
    assert fit10.loo_message == "" and np.isfinite(fit10.loo_rmse)


def test_headline_is_interpolation_with_two_residual_dof_and_the_fit_is_shown_beside():
    """Exact shared-shape curves at 9 points: preference k = 7, so n - k = 2 < 3 although the fit is perfect."""
    m = np.linspace(-4, 4, 9)
    decay = (0.5, 2.0, 1.0, -0.5, 2.0, 1.0)
    pref = preference_curve(m, 1.0, 0.5, -0.2, *decay)
    util = utility_curve(m, 3.0, -1.0, *decay)
    report = fit_and_summarize(m, pref, util, shape="shared")
    assert report.preference.fitted and report.utility.fitted
    assert report.headline.source == "interpolation"
    assert report.headline_reason.startswith("preference: only 2 residual degrees of freedom (9 points, k=7)")
    assert set(report.summaries) == {"interpolation", "fit"}   # the fit beside the headline
    assert report.to_dict()["headline_source"] == "interpolation"


def test_headline_is_interpolation_when_a_parameter_sits_on_its_bound():
    """Utility U = -|m| is a cone: the decay can only approach it with p at its lower bound 0.05 on both sides."""
    m = np.linspace(-8, 8, 17)
    report = fit_and_summarize(m, m, -np.abs(m))
    assert report.utility.fitted and set(report.utility.at_bounds) == {"log_p_pos", "log_p_neg"}
    assert report.headline.source == "interpolation"
    assert report.headline_reason == "utility: log_p_pos, log_p_neg on a bound of the search (the fit is not determined)"
    assert "fit" in report.summaries
