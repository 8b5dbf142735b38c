"""Factor selection (AxBench): each method's multiplier chosen on a dev split, its test-split score reported there.

For every method, the multiplier with the best dev-split mean is chosen and the test-split mean at
that multiplier is reported; the test split never influences the choice. The generation-side report
selects on the judge aggregate or answer accuracy (`report`); the preference-utility results select
on preference accuracy (`select_preference_accuracy`).

Preference accuracy (share of pairs with PrefOdds > 0) maximised over m on the evaluated pairs is an
optimistic number: the same pairs choose and score the factor. Evaluate the methods on a dev split
and on the test split, choose each method's m on dev, report test at that m:

    dev_report = evaluator.compare(methods, dev_pairs)       # e.g. data.split_pairs(train)[1], or a dev file
    test_report = evaluator.compare(methods, test_pairs)
    choices = select_preference_accuracy(dev_report, test_report)   # {method: FactorChoice}
    choices["split"].multiplier, choices["split"].test.mean
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence, Union

import numpy as np

from .score_means import ScoreSummary, ScoreTable


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


# ============================================================================ preference-utility results

Results = Union[Any, Sequence[Any]]
"""An `EvaluationReport` (its `.results`) or a sequence of `MethodResult`s."""


def _results(report_or_results: Results) -> list[Any]:
    return list(getattr(report_or_results, "results", report_or_results))


def preference_accuracy_table(report_or_results: Results, split: str) -> ScoreTable:
    """Method -> m -> preference accuracy over that run's pairs (every pair counts; none is missing)."""
    table: dict[str, dict[float, ScoreSummary]] = {}
    for result in _results(report_or_results):
        metrics = result.metrics
        accuracy = np.asarray(getattr(metrics, "preference_accuracy", None) if getattr(
            metrics, "preference_accuracy", None) is not None else metrics.accuracy, dtype=float)
        n_pairs = int(np.asarray(metrics.pref_odds).shape[1])
        table[result.name] = {float(m): ScoreSummary(float(a), n_pairs, 0)
                              for m, a in zip(metrics.multipliers, accuracy)}
    return ScoreTable(split, table)


def select_preference_accuracy(dev: Results, test: Results, dev_split: str = "dev",
                               test_split: str = "test") -> dict[str, FactorChoice]:
    """Per method: m with the best dev-pair preference accuracy (ties: smaller |m|) and the test accuracy there."""
    return select_factors(preference_accuracy_table(dev, dev_split), preference_accuracy_table(test, test_split))
