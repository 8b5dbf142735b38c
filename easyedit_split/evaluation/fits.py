"""The paper's curve fits and the one-line summaries that compare methods (DESIGN 1.3).

Validity decay, an asymmetric rational quadratic (its own parameters on each side of m = 0):

    D(m) = (1 + (m - m_s)^2 / L_s)^(-p_s),   s = + for m >= 0, s = - for m < 0

    PrefOdds(m) ~ (alpha * m + beta) * D(m) + b        (8 parameters)
    UtilOdds(m) ~ beta_u * D(m) + b_u                 (8 parameters)

Fitted with `scipy.optimize.curve_fit` (bounded trust-region least squares) from several
starting points; the best start (lowest squared error) is kept and its R^2 reported.

Summaries (all relative to the unsteered model, m = 0; computed on a dense grid of a curve,
either the fit or the piecewise-linear interpolation of the measured means, never outside
the swept range):
- utility loss at m: `U(0) - U(m)`.
- `drop_multiplier(delta, direction)`: the multiplier closest to 0 on the side `direction`
  (+1 or -1) where the utility loss first reaches `delta` nats; None if it never does.
- `preference_gain(delta)`: the largest `P(m) - P(0)` over the interval around 0 on which the
  utility loss stays below `delta` (bounded by the drop multipliers on both sides).
- `frontier_area(max_loss)`: the area under the preference-utility frontier,
  `integral_0^max_loss preference_gain(delta) d(delta)` (nats^2): the gain a method buys for
  each amount of utility it gives up, accumulated up to `max_loss`. Larger is better.
"""
from __future__ import annotations

import itertools
import logging
import warnings
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np

logger = logging.getLogger(__name__)

DECAY_PARAMS = ("m_pos", "L_pos", "p_pos", "m_neg", "L_neg", "p_neg")
PREFERENCE_PARAMS = ("alpha", "beta", "b") + DECAY_PARAMS
UTILITY_PARAMS = ("beta_u", "b_u") + DECAY_PARAMS


def validity_decay(m, m_pos, L_pos, p_pos, m_neg, L_neg, p_neg):
    """`D(m) = (1 + (m - m_s)^2 / L_s)^(-p_s)` with s chosen by the sign of m."""
    m = np.asarray(m, dtype=np.float64)
    positive = m >= 0
    shift = np.where(positive, m_pos, m_neg)
    scale = np.where(positive, L_pos, L_neg)
    power = np.where(positive, p_pos, p_neg)
    return (1.0 + (m - shift) ** 2 / scale) ** (-power)


def preference_curve(m, alpha, beta, b, *decay):
    """`PrefOdds(m) ~ (alpha*m + beta) * D(m) + b`."""
    m = np.asarray(m, dtype=np.float64)
    return (alpha * m + beta) * validity_decay(m, *decay) + b


def utility_curve(m, beta_u, b_u, *decay):
    """`UtilOdds(m) ~ beta_u * D(m) + b_u`."""
    return beta_u * validity_decay(m, *decay) + b_u


@dataclass
class CurveFit:
    """Fitted parameters (by name), R^2, and whether the fit converged."""

    kind: str
    params: dict
    r2: float
    converged: bool
    message: str = ""

    def __call__(self, m):
        values = [self.params[name] for name in (PREFERENCE_PARAMS if self.kind == "preference" else UTILITY_PARAMS)]
        return (preference_curve if self.kind == "preference" else utility_curve)(m, *values)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "params": {k: float(v) for k, v in self.params.items()}, "r2": _num(self.r2),
                "converged": self.converged, "message": self.message}


def r_squared(observed: np.ndarray, predicted: np.ndarray) -> float:
    observed, predicted = np.asarray(observed, float), np.asarray(predicted, float)
    total = ((observed - observed.mean()) ** 2).sum()
    residual = ((observed - predicted) ** 2).sum()
    return float(1.0 - residual / total) if total > 0 else (1.0 if residual == 0 else 0.0)


def _decay_starts(span: float) -> list[list[float]]:
    starts = []
    for l_factor, power in itertools.product((0.05, 0.3, 2.0), (0.5, 2.0)):
        scale = max(span * span * l_factor, 1e-3)
        starts.append([0.0, scale, power, 0.0, scale, power])
    return starts


def _decay_bounds(multipliers: np.ndarray, span: float) -> tuple[list[float], list[float]]:
    low_m, high_m = multipliers.min() - span, multipliers.max() + span
    big = max(span, 1.0) ** 2 * 1e4
    return ([low_m, 1e-4, 1e-3, low_m, 1e-4, 1e-3], [high_m, big, 50.0, high_m, big, 50.0])


def _fit(kind: str, multipliers: Sequence[float], values: Sequence[float], max_evaluations: int = 2000) -> CurveFit:
    from scipy.optimize import curve_fit

    m = np.asarray(multipliers, dtype=np.float64)
    y = np.asarray(values, dtype=np.float64)
    keep = np.isfinite(y)
    m, y = m[keep], y[keep]
    names = PREFERENCE_PARAMS if kind == "preference" else UTILITY_PARAMS
    if m.size < 3:
        return CurveFit(kind, {n: float("nan") for n in names}, float("nan"), False, f"only {m.size} finite points")
    span = float(max(m.max() - m.min(), 1e-6))
    y_span = float(max(y.max() - y.min(), 1e-6))
    low_d, high_d = _decay_bounds(m, span)
    if kind == "preference":
        slope = float(np.polyfit(m, y, 1)[0]) if m.size > 1 else 0.0
        big = 1e3 * y_span / span
        lower, upper = [-big, -1e3 * y_span, -1e3 * y_span] + low_d, [big, 1e3 * y_span, 1e3 * y_span] + high_d
        heads = [[slope, 0.0, float(np.interp(0.0, np.sort(m), y[np.argsort(m)]))], [slope, y_span, float(y.min())]]
        function = preference_curve
    else:
        lower, upper = [-1e3 * y_span, -1e3 * y_span - abs(y.min())] + low_d, [1e3 * y_span, 1e3 * y_span + abs(y.max())] + high_d
        heads = [[y_span, float(y.min())], [-y_span, float(y.max())]]
        function = utility_curve
    best: Optional[tuple[float, np.ndarray]] = None
    message = ""
    for head, decay in itertools.product(heads, _decay_starts(span)):
        start = np.clip(np.asarray(head + decay, dtype=np.float64), lower, upper)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                params, _ = curve_fit(function, m, y, p0=start, bounds=(lower, upper), maxfev=max_evaluations, x_scale="jac")
        except (RuntimeError, ValueError) as error:
            message = str(error)
            continue
        sse = float(((function(m, *params) - y) ** 2).sum())
        if best is None or sse < best[0]:
            best = (sse, params)
        if sse <= 1e-10 * max(float(((y - y.mean()) ** 2).sum()), 1e-30):
            break  # exact fit: no better start exists
    if best is None:
        return CurveFit(kind, {n: float("nan") for n in names}, float("nan"), False, message or "no start converged")
    params = best[1]
    return CurveFit(kind, dict(zip(names, map(float, params))), r_squared(y, function(m, *params)), True)


def fit_preference(multipliers, pref_means) -> CurveFit:
    """Fit `PrefOdds(m) ~ (alpha*m + beta) * D(m) + b` to per-multiplier means."""
    return _fit("preference", multipliers, pref_means)


def fit_utility(multipliers, util_means) -> CurveFit:
    """Fit `UtilOdds(m) ~ beta_u * D(m) + b_u` to per-multiplier means."""
    return _fit("utility", multipliers, util_means)


# ============================================================================ summaries


def interpolated(multipliers, values) -> Callable:
    """Piecewise-linear interpolation of measured means (NaN points dropped)."""
    m = np.asarray(multipliers, float)
    y = np.asarray(values, float)
    keep = np.isfinite(y)
    order = np.argsort(m[keep])
    xs, ys = m[keep][order], y[keep][order]
    return lambda q: np.interp(q, xs, ys)


@dataclass
class Summaries:
    """One-line comparison numbers of a method (see the module docstring)."""

    source: str
    utility_loss: float
    preference_gain: Optional[float]
    drop_multiplier_pos: Optional[float]
    drop_multiplier_neg: Optional[float]
    frontier_area: Optional[float]
    frontier_max_loss: float
    preference_at_0: float
    utility_at_0: float

    def to_dict(self) -> dict:
        return {k: _num(v) if isinstance(v, float) else v for k, v in self.__dict__.items()}


def _grid(multipliers, points: int = 2001) -> np.ndarray:
    m = np.asarray(multipliers, float)
    grid = np.linspace(m.min(), m.max(), points)
    return np.unique(np.concatenate([grid, [0.0]] if m.min() <= 0 <= m.max() else [grid]))


def _reference_multiplier(multipliers) -> float:
    m = np.asarray(multipliers, float)
    return 0.0 if m.min() <= 0 <= m.max() else float(m[np.argmin(np.abs(m))])


def drop_multiplier(utility: Callable, multipliers, delta: float, direction: int = 1) -> Optional[float]:
    """The multiplier nearest 0 on side `direction` where `U(0) - U(m) >= delta` (None: not within the range)."""
    grid = _grid(multipliers)
    ref = _reference_multiplier(multipliers)
    side = grid[grid >= ref] if direction > 0 else grid[grid <= ref][::-1]
    loss = float(utility(ref)) - utility(side)
    hit = np.nonzero(loss >= delta)[0]
    if hit.size == 0:
        return None
    i = int(hit[0])
    if i == 0:
        return float(side[0])
    # linear refinement between the last grid point below delta and the first above it
    x0, x1, l0, l1 = side[i - 1], side[i], loss[i - 1], loss[i]
    return float(x0 + (delta - l0) * (x1 - x0) / (l1 - l0)) if l1 != l0 else float(x1)


def preference_gain(preference: Callable, utility: Callable, multipliers, delta: float) -> float:
    """Largest `P(m) - P(0)` over the interval around 0 where the utility loss stays below `delta`."""
    grid = _grid(multipliers)
    ref = _reference_multiplier(multipliers)
    high = drop_multiplier(utility, multipliers, delta, +1)
    low = drop_multiplier(utility, multipliers, delta, -1)
    inside = (grid >= (low if low is not None else -np.inf)) & (grid <= (high if high is not None else np.inf))
    inside &= (float(utility(ref)) - utility(grid)) <= delta + 1e-12 * max(1.0, abs(delta))
    if not inside.any():
        return 0.0
    return float(max(0.0, (preference(grid[inside]) - float(preference(ref))).max()))


def frontier_area(preference: Callable, utility: Callable, multipliers, max_loss: float, points: int = 201) -> float:
    """`integral_0^max_loss preference_gain(delta) d(delta)` (trapezoid rule on `points` losses)."""
    losses = np.linspace(0.0, max_loss, points)
    gains = np.array([preference_gain(preference, utility, multipliers, d) for d in losses])
    return float(np.sum((gains[1:] + gains[:-1]) * np.diff(losses) / 2.0))


def summarize_curves(preference: Callable, utility: Callable, multipliers, source: str,
                     utility_loss: float = 1.0, frontier_max_loss: float = 3.0) -> Summaries:
    ref = _reference_multiplier(multipliers)
    return Summaries(
        source=source,
        utility_loss=float(utility_loss),
        preference_gain=preference_gain(preference, utility, multipliers, utility_loss),
        drop_multiplier_pos=drop_multiplier(utility, multipliers, utility_loss, +1),
        drop_multiplier_neg=drop_multiplier(utility, multipliers, utility_loss, -1),
        frontier_area=frontier_area(preference, utility, multipliers, frontier_max_loss),
        frontier_max_loss=float(frontier_max_loss),
        preference_at_0=float(preference(ref)),
        utility_at_0=float(utility(ref)),
    )


@dataclass
class FitReport:
    preference: CurveFit
    utility: CurveFit
    summaries: dict = field(default_factory=dict)   # source ("fit"/"interpolation") -> Summaries

    def to_dict(self) -> dict:
        return {"preference": self.preference.to_dict(), "utility": self.utility.to_dict(),
                "summaries": {k: v.to_dict() for k, v in self.summaries.items()}}


def fit_and_summarize(multipliers, pref_means, util_means, utility_loss: float = 1.0,
                      frontier_max_loss: float = 3.0) -> FitReport:
    """Both fits plus the summaries from the fit (when it converged) and from interpolation."""
    pref_fit = fit_preference(multipliers, pref_means)
    util_fit = fit_utility(multipliers, util_means)
    report = FitReport(pref_fit, util_fit)
    report.summaries["interpolation"] = summarize_curves(
        interpolated(multipliers, pref_means), interpolated(multipliers, util_means), multipliers,
        "interpolation", utility_loss, frontier_max_loss)
    if pref_fit.converged and util_fit.converged:
        report.summaries["fit"] = summarize_curves(pref_fit, util_fit, multipliers, "fit", utility_loss, frontier_max_loss)
    return report


def _num(value):
    if value is None:
        return None
    value = float(value)
    return value if np.isfinite(value) else None
