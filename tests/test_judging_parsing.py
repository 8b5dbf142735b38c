"""Reading the judge's rating: last Rating: line, decorations tolerated, bad values missing (None), never 0."""
from __future__ import annotations

import pytest

from easyedit_split.judging.parsing import parse_rating
from easyedit_split.judging.rubrics import RUBRIC_NAMES, RUBRIC_VERSION, get_rubric, judge_prompts


@pytest.mark.parametrize("answer,expected", [
    ("The concept is clear.\nRating: 2", 2.0),
    ("Rating: [[1]]", 1.0),
    ("**Rating:** 0", 0.0),
    ("**Rating: 2**", 2.0),
    ("Rating: 2/2", 2.0),
    ("rating: 1 out of 2.", 1.0),
    ("### Rating: (0)", 0.0),
    ("Rating - 2", 2.0),
    ("I give it a rating of 1.", 1.0),
    ("Rating: 1\n...on reflection...\nRating: 0", 0.0),   # the last rating line counts
    ("Rating: 1.5", 1.5),
    # the explicit rating line wins over a mention of "rating" in prose after it (issue 22, item 7)
    ("Rating: 2\nNote: a rating of 0 would mean absent", 2.0),
    ("**Rating:** 1\nA rating of 2 needs more.", 1.0),
    ("- Rating: 1\n(rating of 0 if off topic)", 1.0),
    # missing, never 0
    ("It is fluent.", None), ("", None), (None, None),
    ("Rating: 3", None), ("Rating: -1", None), ("Rating: 4/5", None), ("Rating: 2/10", None),
    ("Rating: two", None), ("Rating: [[score]]", None),
])
def test_parse_rating(answer, expected):
    assert parse_rating(answer) == expected


def test_rubrics_render_their_fields_and_end_with_the_rating_instruction():
    prompts = judge_prompts("The sea is blue.", instruction="Describe the sea.", concept="the ocean")
    assert tuple(prompts) == RUBRIC_NAMES == ("concept", "instruction", "fluency")
    assert "the ocean" in prompts["concept"] and "Describe the sea." in prompts["instruction"]
    assert all("The sea is blue." in prompt and "Rating: N" in prompt for prompt in prompts.values())
    assert "Describe the sea." not in prompts["fluency"]
    assert RUBRIC_VERSION


def test_missing_field_and_unknown_rubric_are_clear_errors():
    with pytest.raises(ValueError, match="rubric 'concept' needs concept"):
        judge_prompts("text", instruction="x", concept=None)
    with pytest.raises(ValueError, match="known: concept, instruction, fluency"):
        get_rubric("style")
    assert list(judge_prompts("text", rubrics=("fluency",))) == ["fluency"]
