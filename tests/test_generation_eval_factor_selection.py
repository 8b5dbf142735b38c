"""Factor selection: chosen on the dev split, reported on the test split; ties, refusals, preference accuracy."""
from __future__ import annotations

import types

import numpy as np
import pytest

from easyedit_split.generation_eval.factor_selection import select_factor, select_factors, select_preference_accuracy
from easyedit_split.generation_eval.score_means import ScoreSummary, ScoreTable


def s(mean, n=10, missing=0):
    return ScoreSummary(mean, n, missing)


def test_factor_is_chosen_on_dev_and_reported_on_test():
    dev = ScoreTable("dev", {
        "caa": {0.0: s(0.4), 2.0: s(1.1), 4.0: s(0.9)},
        "split": {0.0: s(0.4), 4.0: s(1.3), 8.0: s(None, 0, 10)},
    })
    test = ScoreTable("test", {
        "caa": {0.0: s(0.5), 2.0: s(0.8), 4.0: s(1.4)},     # test prefers 4, but dev chose 2
        "split": {0.0: s(0.5), 4.0: s(1.2), 8.0: s(1.9)},   # 8 has no dev score: not selectable
    })
    choices = select_factors(dev, test)
    assert choices["caa"].multiplier == 2.0 and choices["caa"].test.mean == 0.8 and choices["caa"].dev.mean == 1.1
    assert choices["split"].multiplier == 4.0 and choices["split"].test.mean == 1.2
    assert (choices["caa"].dev_split, choices["caa"].test_split) == ("dev", "test")


def test_ties_go_to_the_gentler_factor_and_lower_is_better_works():
    dev = {-4.0: s(1.0), -2.0: s(1.0), 2.0: s(1.0), 0.0: s(0.2)}
    test = {m: s(m) for m in dev}
    assert select_factor("m", dev, test).multiplier == -2.0
    assert select_factor("m", dev, test, higher_is_better=False).multiplier == 0.0


def test_selection_refuses_the_test_split_and_mismatched_tables():
    table = ScoreTable("test", {"caa": {0.0: s(1.0)}})
    with pytest.raises(ValueError, match="two different splits"):
        select_factors(table, table)
    with pytest.raises(ValueError, match="test split is not allowed"):
        select_factors(ScoreTable("test", {"caa": {0.0: s(1.0)}}), ScoreTable("validation", {"caa": {0.0: s(1.0)}}))
    with pytest.raises(ValueError, match="no test score"):
        select_factors(ScoreTable("dev", {"caa": {2.0: s(1.0)}}), ScoreTable("test", {"caa": {0.0: s(1.0)}}))
    with pytest.raises(ValueError, match="no multiplier has a dev-split score"):
        select_factor("caa", {0.0: s(None, 0, 3)}, {0.0: s(1.0)})
    with pytest.raises(ValueError, match=r"\['sft'\]"):
        select_factors(ScoreTable("dev", {"sft": {0.0: s(1.0)}}), ScoreTable("test", {}))


def test_preference_accuracy_factor_chosen_on_dev_pairs():
    def result(name, pref_odds):  # [K multipliers, N pairs]; accuracy = share of pairs with PrefOdds > 0
        metrics = types.SimpleNamespace(multipliers=np.array([-2.0, 0.0, 2.0, 4.0]), pref_odds=np.array(pref_odds),
                                        accuracy=(np.array(pref_odds) > 0).mean(axis=1))
        return types.SimpleNamespace(name=name, metrics=metrics)

    dev = [result("split", [[-1, -1, 1, 1], [1, -1, 1, 1], [1, 1, 1, -1], [1, 1, 1, 1]])]   # 0.5 0.75 0.75 1.0
    test = [result("split", [[-1, -1], [1, -1], [1, 1], [-1, -1]])]                          # 0 0.5 1.0 0.0
    choice = select_preference_accuracy(dev, test)["split"]
    assert choice.multiplier == 4.0 and choice.dev.mean == 1.0 and choice.test.mean == 0.0  # test's best (2) not used
    assert choice.test.n_scored == 2
    with pytest.raises(ValueError, match="test split is not allowed"):
        select_preference_accuracy(test, dev, dev_split="test", test_split="dev")
