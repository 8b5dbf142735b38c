"""Factor selection for the preference-utility results: choose m on dev pairs, report test pairs at that m.

The preference-utility report's preference accuracy (share of pairs with PrefOdds > 0) maximised
over m on the evaluated pairs is an optimistic number: the same pairs choose and score the factor.
AxBench's rule, used here as for the generation-side scores (`judging.select_factors`): evaluate the
methods on a dev split and on the test split, choose each method's m on dev, report test at that m.

    dev_report = evaluator.compare(methods, dev_pairs)       # e.g. data.split_pairs(train)[1], or a dev file
    test_report = evaluator.compare(methods, test_pairs)
    choices = select_preference_accuracy(dev_report, test_report)   # {method: FactorChoice}
    choices["split"].multiplier, choices["split"].test.mean
"""
from __future__ import annotations

from typing import Any, Sequence, Union

import numpy as np

from ..judging import FactorChoice, ScoreSummary, ScoreTable, select_factors

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
