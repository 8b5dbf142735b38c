"""The judge's harmonic-mean aggregate of one item: zero and missing rules."""
from __future__ import annotations

import pytest

from easyedit_split.judging.rating import ItemRatings, harmonic_mean_rating


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
