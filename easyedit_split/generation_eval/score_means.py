"""Means of per-item scores that count what is missing: per multiplier, per method, per data split.

A missing score (None or NaN: a rating the judge did not give) is left out of the mean and counted
next to it, never scored as 0. `ScoreTable` (method -> m -> summary on one split) is what factor
selection (`factor_selection`) reads.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Optional


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
