"""Tests for easyedit_split.data: loaders for EasyEdit's layouts, the shipped datasets, errors, splits."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd
import pytest

from easyedit_split.data import (
    GenerationExample, PolarityPair, dataset_path, detect_format, group_by_concept, list_datasets, load_dataset, load_generation_data, split_pairs, strip_completions,
)
from easyedit_split.errors import DatasetError

FIXTURES = Path(__file__).parent / "fixtures" / "data"

SHIPPED_SIZES = {"sentiment": {"train": 129, "test": 40}, "food": {"train": 60, "test": 20}}

PSYCHOPATHY_ROWS = [
    {"question": "Q one?", "answer_matching_behavior": "Yes, gladly.", "answer_not_matching_behavior": "No, never."},
    {"question": "Q two?", "answer_matching_behavior": " Yes", "answer_not_matching_behavior": " No"},
]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- layouts

def test_psychopathy_jsonl_round_trip_keeps_completions_verbatim(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", PSYCHOPATHY_ROWS)
    pairs = load_dataset(path)
    assert pairs == [
        PolarityPair("Q one?", "Yes, gladly.", "No, never."),
        PolarityPair("Q two?", " Yes", " No"),  # leading space kept; stripping is the caller's choice
    ]
    assert detect_format(PSYCHOPATHY_ROWS[0]) == "psychopathy"


def test_plain_json_list_and_single_object(tmp_path):
    listed = tmp_path / "list.json"
    listed.write_text(json.dumps(PSYCHOPATHY_ROWS), encoding="utf-8")
    assert [p.question for p in load_dataset(listed)] == ["Q one?", "Q two?"]
    single = tmp_path / "single.json"
    single.write_text(json.dumps(PSYCHOPATHY_ROWS[0]), encoding="utf-8")
    assert load_dataset(single) == [PolarityPair("Q one?", "Yes, gladly.", "No, never.")]


def test_standard_fields_jsonl(tmp_path):
    path = write_jsonl(tmp_path / "std.jsonl", [{"question": "Q?", "matching": "good", "not_matching": "bad"}])
    assert load_dataset(path) == [PolarityPair("Q?", "good", "bad")]


def test_powerseeking_csv_round_trip_with_quotes_and_newlines(tmp_path):
    frame = pd.DataFrame({
        "question": ["Would you, if asked, \"take charge\"?", "Two\nlines?"],
        "matching": ["Yes, all of it.", "Yes."],
        "not_matching": ["No, thanks.", "No."],
    })
    path = tmp_path / "train.csv"
    frame.to_csv(path, index=False)
    pairs = load_dataset(path)
    assert pairs[0] == PolarityPair('Would you, if asked, "take charge"?', "Yes, all of it.", "No, thanks.")
    assert pairs[1].question == "Two\nlines?"


def test_shipped_fixture_files_load():
    assert len(load_dataset(FIXTURES / "psychopathy_sample.jsonl")) == 4
    assert len(load_dataset(FIXTURES / "powerseeking_sample.csv", dataset_format="powerseeking")) == 3
    assert len(load_generation_data(FIXTURES / "generation_sample.jsonl")) == 2


def test_axbench_parquet_keeps_positive_rows_and_groups_by_concept():
    pairs = load_dataset(FIXTURES / "axbench_sample.parquet")
    assert len(pairs) == 4  # the negative row (concept_id -1) is not a steering example
    groups = group_by_concept(pairs)
    assert list(groups) == [0, 1]
    assert {p.concept for p in groups[0]} == {"ocean imagery"}
    assert {p.concept for p in groups[1]} == {"python code"}
    assert groups[1][0] == PolarityPair(
        "Write a sentence about a city.", "The function returns a sorted list of keys.",
        "The city was busy at noon.", concept_id=1, concept="python code",
    )
    everything = load_dataset(FIXTURES / "axbench_sample.parquet", positive_only=False)
    assert sorted(group_by_concept(everything)) == [-1, 0, 1]


def test_axbench_category_filter_uses_category_column(tmp_path):
    frame = pd.DataFrame({
        "input": ["a", "b"], "winning_output": ["w1", "w2"], "losing_output": ["l1", "l2"],
        "output_concept": ["c", "c"], "concept_id": [3, 3], "category": ["positive", "negative"],
    })
    path = tmp_path / "ax.parquet"
    frame.to_parquet(path)
    assert [p.question for p in load_dataset(path)] == ["a"]


def test_group_by_concept_sorts_ids_and_keeps_order():
    pairs = [PolarityPair(f"q{i}", "m", "n", concept_id=cid) for i, cid in enumerate([2, 0, 2, 1])]
    groups = group_by_concept(pairs)
    assert list(groups) == [0, 1, 2]
    assert [p.question for p in groups[2]] == ["q0", "q2"]


def test_steer_eval_json(tmp_path):
    path = tmp_path / "train.json"
    path.write_text(json.dumps([
        {"question": "Q?", "pos_answer": "p", "neg_answer": "n", "concept": "humor", "concept_id": 4},
    ]), encoding="utf-8")
    assert load_dataset(path) == [PolarityPair("Q?", "p", "n", concept_id=4, concept="humor")]


def test_dataset_format_override_beats_detection(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"question": "Q?", "matching": "m", "not_matching": "n"}])
    with pytest.raises(DatasetError, match="answer_matching_behavior"):
        load_dataset(path, dataset_format="psychopathy")
    with pytest.raises(DatasetError, match="Unknown dataset_format 'nope'.*psychopathy"):
        load_dataset(path, dataset_format="nope")


def test_undetectable_layout_lists_known_layouts(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "x", "text": "y"}])
    with pytest.raises(DatasetError) as info:
        load_dataset(path)
    message = str(info.value)
    assert str(path) in message and "prompt, text" in message
    assert "psychopathy: question, answer_matching_behavior" in message and "dataset_format=" in message


def test_generation_file_given_to_pair_loader_says_what_to_use(tmp_path):
    path = write_jsonl(tmp_path / "g.jsonl", [{"input": "x", "reference_response": "y"}])
    with pytest.raises(DatasetError, match="load_generation_data"):
        load_dataset(path)


# --------------------------------------------------------------------------- generation data

def test_generation_layouts(tmp_path):
    gen = write_jsonl(tmp_path / "gen.jsonl", [{"input": "Hi?", "reference_response": "Hello."}])
    assert load_generation_data(gen) == [GenerationExample("Hi?", "Hello.")]
    psy = write_jsonl(tmp_path / "psy.jsonl", PSYCHOPATHY_ROWS[:1])
    assert load_generation_data(psy) == [GenerationExample("Q one?", "Yes, gladly.")]
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "The day was", "continuation": "fine."}])
    assert load_generation_data(prompts) == [GenerationExample("The day was", "fine.")]
    bare = write_jsonl(tmp_path / "bare.jsonl", [{"input": "Only a prompt."}])
    assert load_generation_data(bare) == [GenerationExample("Only a prompt.", None)]


def test_axbench_generation_parquet_has_concepts_and_no_reference(tmp_path):
    path = tmp_path / "axbench_test.parquet"
    pd.DataFrame({"input": ["a", "b"], "output_concept": ["c0", "c1"], "concept_id": [0, 1],
                  "category": ["positive", "positive"]}).to_parquet(path)
    assert load_generation_data(path) == [
        GenerationExample("a", None, concept_id=0, concept="c0"),
        GenerationExample("b", None, concept_id=1, concept="c1"),
    ]


def test_shipped_dataset_as_generation_prompts():
    examples = load_generation_data("sentiment", split="test")
    pairs = load_dataset("sentiment", split="test")
    assert [(e.input, e.reference_response) for e in examples] == [(p.question, p.matching) for p in pairs]
    assert {e.concept for e in examples} == {"sentiment"}


# --------------------------------------------------------------------------- errors

def test_missing_field_names_file_line_field_and_row_fields(tmp_path):
    rows = PSYCHOPATHY_ROWS + [{"question": "Q three?", "answer_matching_behavior": "Yes."}]
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(DatasetError) as info:
        load_dataset(path)
    message = str(info.value)
    assert str(path) in message and "line 3" in message
    assert "missing field 'answer_not_matching_behavior'" in message
    assert "answer_matching_behavior, question" in message


def test_empty_field_names_file_line_and_field(tmp_path):
    rows = [PSYCHOPATHY_ROWS[0], {**PSYCHOPATHY_ROWS[1], "question": "  "}]
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(DatasetError, match=r"line 2: empty field 'question'"):
        load_dataset(path)


def test_blank_lines_are_counted_in_line_numbers(tmp_path):
    path = tmp_path / "train.jsonl"
    bad = dict(PSYCHOPATHY_ROWS[1], answer_matching_behavior=None)
    path.write_text(json.dumps(PSYCHOPATHY_ROWS[0]) + "\n\n" + json.dumps(bad) + "\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"line 3: empty field 'answer_matching_behavior'"):
        load_dataset(path)


def test_malformed_json_line_names_file_and_line(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(PSYCHOPATHY_ROWS[0]) + "\n{\"question\": \"oops\",\n", encoding="utf-8")
    with pytest.raises(DatasetError) as info:
        load_dataset(path)
    assert str(path) in str(info.value) and "line 2: malformed JSON" in str(info.value)


def test_non_object_jsonl_line(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text("[1, 2]\n", encoding="utf-8")
    with pytest.raises(DatasetError, match="line 1: expected a JSON object"):
        load_dataset(path)


def test_csv_empty_field_names_start_line_of_record(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text('question,matching,not_matching\n"multi\nline",yes,no\nQ2,,no\n', encoding="utf-8")
    with pytest.raises(DatasetError) as info:
        load_dataset(path)
    message = str(info.value)
    assert str(path) in message and "line 4: empty field 'matching'" in message
    assert "matching, not_matching, question" in message


def test_csv_extra_values_are_an_error(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("question,matching,not_matching\nQ,yes,no,extra\n", encoding="utf-8")
    with pytest.raises(DatasetError, match="line 2: more values than header columns"):
        load_dataset(path)


def test_parquet_missing_value_names_row_index(tmp_path):
    path = tmp_path / "ax.parquet"
    pd.DataFrame({
        "input": ["a", "b"], "winning_output": ["w", None], "losing_output": ["l", "l"],
        "output_concept": ["c", "c"], "concept_id": [0, 0], "category": ["positive", "positive"],
    }).to_parquet(path)
    with pytest.raises(DatasetError) as info:
        load_dataset(path)
    message = str(info.value)
    assert str(path) in message and "row 1: empty field 'winning_output'" in message
    assert "category, concept_id, input, losing_output, output_concept, winning_output" in message


def test_non_text_field_is_an_error(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"question": "Q?", "matching": 3, "not_matching": "n"}])
    with pytest.raises(DatasetError, match="line 1: field 'matching' must be text"):
        load_dataset(path)


def test_bad_concept_id_is_an_error(tmp_path):
    path = tmp_path / "ax.parquet"
    pd.DataFrame({"input": ["a"], "winning_output": ["w"], "losing_output": ["l"],
                  "output_concept": ["c"], "concept_id": ["seven"], "category": ["positive"]}).to_parquet(path)
    with pytest.raises(DatasetError, match="row 0: field 'concept_id' must be an integer"):
        load_dataset(path)


def test_unknown_dataset_name_lists_shipped_names():
    with pytest.raises(DatasetError) as info:
        load_dataset("psychopathy")
    assert "Unknown dataset 'psychopathy'" in str(info.value)
    for name in list_datasets():
        assert name in str(info.value)


def test_unknown_split_lists_available_splits():
    with pytest.raises(DatasetError, match="no split 'valid'; available splits: test, train"):
        load_dataset("sentiment", split="valid")


def test_missing_file_and_empty_file_and_bad_extension(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        load_dataset(tmp_path / "absent.jsonl")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    with pytest.raises(DatasetError, match="holds no rows"):
        load_dataset(empty)
    text = tmp_path / "data.txt"
    text.write_text("x", encoding="utf-8")
    with pytest.raises(DatasetError, match="unsupported file extension '.txt'"):
        load_dataset(text)


def test_dataset_directory_resolves_split_files(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", PSYCHOPATHY_ROWS)
    write_jsonl(tmp_path / "test.jsonl", PSYCHOPATHY_ROWS[:1])
    assert dataset_path(tmp_path, "test") == tmp_path / "test.jsonl"
    assert len(load_dataset(tmp_path, split="test")) == 1


# --------------------------------------------------------------------------- shipped datasets

def test_list_datasets_names_the_shipped_sets():
    assert list_datasets() == sorted(SHIPPED_SIZES)


@pytest.mark.parametrize("name", sorted(SHIPPED_SIZES))
def test_shipped_dataset_sizes_and_content(name):
    all_questions = []
    for split, size in SHIPPED_SIZES[name].items():
        pairs = load_dataset(name, split=split)
        assert len(pairs) == size
        assert {p.concept for p in pairs} == {name} and {p.concept_id for p in pairs} == {0}
        for pair in pairs:
            for text in (pair.question, pair.matching, pair.not_matching):
                assert text and text == text.strip() and text.isascii()
            assert pair.matching != pair.not_matching
            assert 6 <= len(pair.matching.split()) <= 15 and 6 <= len(pair.not_matching.split()) <= 15
        completions = [c for p in pairs for c in (p.matching, p.not_matching)]
        assert len(set(completions)) == len(completions)
        all_questions += [p.question for p in pairs]
    assert len(set(all_questions)) == len(all_questions)  # distinct, and no train/test overlap


def test_shipped_files_use_the_psychopathy_layout():
    path = dataset_path("sentiment", "train")
    assert path.suffix == ".jsonl"
    first = json.loads(path.read_text(encoding="utf-8").splitlines()[0])
    assert set(first) == {"question", "answer_matching_behavior", "answer_not_matching_behavior"}


# --------------------------------------------------------------------------- utilities

def test_split_pairs_is_deterministic_disjoint_and_complete():
    pairs = [PolarityPair(f"q{i}", "m", "n", concept_id=i % 2) for i in range(20)]
    train, test = split_pairs(pairs, test_fraction=0.25, seed=3)
    assert (train, test) == split_pairs(pairs, test_fraction=0.25, seed=3)
    assert sorted(train + test, key=lambda p: int(p.question[1:])) == pairs
    assert not set(train) & set(test)
    assert [p.concept_id for p in test].count(0) == 2 and [p.concept_id for p in test].count(1) == 2
    assert split_pairs(pairs, 0.25, seed=4) != (train, test)


def test_split_pairs_rejects_bad_fraction():
    with pytest.raises(DatasetError, match="test_fraction"):
        split_pairs([PolarityPair("q", "m", "n")], test_fraction=1.0)


def test_strip_completions_and_pairs_are_frozen():
    pair = PolarityPair("Q?", " Yes", " No")
    assert strip_completions([pair]) == [PolarityPair("Q?", "Yes", "No")]
    with pytest.raises(dataclasses.FrozenInstanceError):
        pair.matching = "x"  # type: ignore[misc]
