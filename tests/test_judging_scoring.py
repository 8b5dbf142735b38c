"""Harmonic-mean aggregate, zero and missing rules, per-multiplier means, dev-split factor selection."""
from __future__ import annotations

import pytest

from easyedit_split.judging.rating import ItemRatings
from easyedit_split.judging.scoring import (
    ScoreSummary, ScoreTable, harmonic_mean_rating, mean_by_multiplier, select_factor, select_factors, summarize,
)


@pytest.mark.parametrize("ratings,expected", [
    ([2, 2, 2], 2.0),
    ([2, 1, 2], 1.5),              # 3 / (0.5 + 1 + 0.5)
    ([1, 1, 2], 1.2),              # 3 / (1 + 1 + 0.5)
    ([2, 0, 2], 0.0),              # any zero -> 0
    ([0, 0, 0], 0.0),
    ([1.5, 1, 2], 3 / (1 / 1.5 + 1 + 0.5)),
    ([2, None, 2], None),          # missing -> missing, never 0
    ([0, None, 2], None),          # missing wins over zero: we do not know the item's score
    ([], None),
])
def test_harmonic_mean_rating(ratings, expected):
    got = harmonic_mean_rating(ratings)
    assert got == (pytest.approx(expected) if expected is not None else None)


def test_item_aggregate_needs_all_three_rubrics():
    assert ItemRatings({"concept": 2.0, "instruction": 1.0, "fluency": 2.0}).aggregate == pytest.approx(1.5)
    assert ItemRatings({"concept": 2.0, "fluency": 2.0}).aggregate is None


def test_mean_by_multiplier_counts_missing():
    rows = [
        {"multiplier": 0, "aggregate": 2.0}, {"multiplier": 0, "aggregate": 1.0},
        {"multiplier": 2, "aggregate": None}, {"multiplier": 2, "aggregate": 0.0}, {"multiplier": 2, "aggregate": 1.5},
        {"multiplier": -2, "aggregate": None},
    ]
    table = mean_by_multiplier(rows, "aggregate")
    assert list(table) == [-2.0, 0.0, 2.0]
    assert table[0.0] == ScoreSummary(1.5, 2, 0)
    assert table[2.0] == ScoreSummary(0.75, 2, 1)   # (0 + 1.5) / 2; the missing item is not a 0
    assert table[-2.0] == ScoreSummary(None, 0, 1)
    assert table[2.0].n_items == 3
    with pytest.raises(KeyError, match="row 0"):
        mean_by_multiplier([{"aggregate": 1.0}], "aggregate")


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


def test_summarize_treats_nan_as_missing():
    assert summarize([1.0, float("nan"), None, 2.0]) == ScoreSummary(1.5, 2, 2)
