"""The one multiplier parser: comma lists, start:stop:step ranges, and clear errors."""
from __future__ import annotations

import pytest

from easyedit_split.errors import MultiplierError
from easyedit_split.multipliers import parse_multipliers


@pytest.mark.parametrize("text, expected", [
    ("-2,0,2", [-2.0, 0.0, 2.0]),
    ("2, 0 ,-2", [-2.0, 0.0, 2.0]),          # sorted, spaces allowed
    ("1,1,0", [0.0, 1.0]),                    # distinct
    ("-8:8:4", [-8.0, -4.0, 0.0, 4.0, 8.0]),  # stop included when the steps land on it
    ("0:1:0.3", [0.0, 0.3, 0.6, 0.9]),        # stop left out when they do not
    ("-1:1:0.5", [-1.0, -0.5, 0.0, 0.5, 1.0]),
    ("4:-4:-4", [-4.0, 0.0, 4.0]),            # counting down
    ("0:0:1", [0.0]),
    ("-4,0:2:1", [-4.0, 0.0, 1.0, 2.0]),      # lists and ranges mix
])
def test_lists_and_ranges(text, expected):
    assert parse_multipliers(text) == pytest.approx(expected)


def test_several_arguments_are_one_list():
    assert parse_multipliers(["-4", "0", "4:8:4"]) == [-4.0, 0.0, 4.0, 8.0]


def test_range_values_have_no_float_drift():
    assert parse_multipliers("0:1:0.1")[3] == 0.3


@pytest.mark.parametrize("text, words", [
    ("", "no values"),
    (" , ,", "no values"),
    ([], "no values"),
    ("nan", "not finite"),
    ("1,inf", "not finite"),
    ("-inf:0:1", "not finite"),
    ("0:1", "start:stop:step"),
    ("0:1:2:3", "start:stop:step"),
    ("0:1:0", "never gets"),
    ("1:0:1", "never gets"),
    ("two", "not a number"),
])
def test_bad_input_names_the_problem(text, words):
    with pytest.raises(MultiplierError, match=words):
        parse_multipliers(text)


def test_error_is_a_value_error():
    assert issubclass(MultiplierError, ValueError)
