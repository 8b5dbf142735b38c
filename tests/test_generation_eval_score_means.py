"""Per-multiplier means that count missing scores (never as 0); NaN counts as missing."""
from __future__ import annotations

import pytest

from easyedit_split.generation_eval.score_means import ScoreSummary, mean_by_multiplier, summarize


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


def test_summarize_treats_nan_as_missing():
    assert summarize([1.0, float("nan"), None, 2.0]) == ScoreSummary(1.5, 2, 2)
