"""Per-item judge ratings -> aggregate scores, per-multiplier means, and factor selection on a dev split.

Aggregate of one item (EasyEdit / AxBench): the harmonic mean of its concept, instruction and fluency
ratings, ``3 / (1/c + 1/i + 1/f)``; 0 when any rating is 0; missing (None) when any rating is missing.
Missing items are left out of means and counted, never scored as 0.

Factor selection (AxBench): for each method, the multiplier with the best dev-split mean is chosen,
and the test-split mean at that multiplier is reported. The test split never influences the choice.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Optional, Sequence


def harmonic_mean_rating(ratings: Sequence[Optional[float]]) -> Optional[float]:
    """``n / sum(1/r)``; 0 if any rating is 0; None if any rating is None (or there are none)."""
    if not ratings or any(rating is None for rating in ratings):
        return None
    if any(rating == 0 for rating in ratings):
        return 0.0
    return len(ratings) / sum(1.0 / rating for rating in ratings)


@dataclass(frozen=True)
class ScoreSummary:
    """Mean of the scored items at one multiplier, with the counts behind it."""

    mean: Optional[float]
    n_scored: int
    n_missing: int

    @property
    def n_items(self) -> int:
        return self.n_scored + self.n_missing


def summarize(values: Iterable[Optional[float]]) -> ScoreSummary:
    """Mean over the non-missing values (None when all are missing); NaN counts as missing."""
    values = list(values)
    scored = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    n_missing = len(values) - len(scored)
    return ScoreSummary(sum(scored) / len(scored) if scored else None, len(scored), n_missing)


def mean_by_multiplier(rows: Iterable[Mapping], score: str) -> dict[float, ScoreSummary]:
    """Multiplier -> summary of ``row[score]`` over the rows at that multiplier (rows need ``multiplier``)."""
    grouped: dict[float, list[Optional[float]]] = {}
    for index, row in enumerate(rows):
        try:
            multiplier = float(row["multiplier"])
            value = row[score]
        except KeyError as error:
            raise KeyError(f"row {index}: missing key {error}") from None
        grouped.setdefault(multiplier, []).append(value)
    return {multiplier: summarize(values) for multiplier, values in sorted(grouped.items())}


@dataclass(frozen=True)
class ScoreTable:
    """Method -> multiplier -> summary of one score on one data split (``split`` names it)."""

    split: str
    scores: Mapping[str, Mapping[float, ScoreSummary]] = field(default_factory=dict)


@dataclass(frozen=True)
class FactorChoice:
    """The multiplier chosen on the dev split and the test-split score at it."""

    method: str
    multiplier: float
    dev: ScoreSummary
    test: ScoreSummary
    dev_split: str
    test_split: str


def select_factor(
    method: str, dev: Mapping[float, ScoreSummary], test: Mapping[float, ScoreSummary],
    dev_split: str = "dev", test_split: str = "test", higher_is_better: bool = True,
) -> FactorChoice:
    """Best dev mean wins; ties go to the smaller |m| (the gentler intervention), then the smaller m.

    Multipliers whose dev mean is missing cannot be chosen. The test table must hold the chosen multiplier.
    """
    candidates = [(m, s) for m, s in dev.items() if s.mean is not None]
    if not candidates:
        raise ValueError(f"method '{method}': no multiplier has a dev-split score ({dev_split}); cannot select")
    sign = 1.0 if higher_is_better else -1.0
    multiplier, dev_summary = min(candidates, key=lambda item: (-sign * item[1].mean, abs(item[0]), item[0]))
    if multiplier not in test:
        raise ValueError(f"method '{method}': multiplier {multiplier:g} chosen on {dev_split} has no "
                         f"{test_split} score (test multipliers: {sorted(test)})")
    return FactorChoice(method, multiplier, dev_summary, test[multiplier], dev_split, test_split)


def select_factors(dev: ScoreTable, test: ScoreTable, higher_is_better: bool = True) -> dict[str, FactorChoice]:
    """Per method: the factor chosen on `dev` and the `test` score there. Refuses to select on a test split."""
    if dev is test or dev.split == test.split:
        raise ValueError(f"factor selection needs two different splits; got '{dev.split}' for both")
    if dev.split.strip().lower() == "test":
        raise ValueError("factor selection on the test split is not allowed: pass a dev split as `dev`")
    missing = sorted(set(dev.scores) - set(test.scores))
    if missing:
        raise ValueError(f"methods {missing} have dev scores but no {test.split} scores")
    return {
        method: select_factor(method, dev.scores[method], test.scores[method], dev.split, test.split,
                              higher_is_better)
        for method in dev.scores
    }
