"""EasyEdit's layouts read as EasyEdit reads them: a file in data/<dataset>/ is named after <dataset>,
metadata records the dataset as one string, and every JSON file is strict JSON (null + reason, no NaN)."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from easyedit_split.easyedit_layout import dataset_label, dataset_name
from easyedit_split.editor import SteerEditor
from easyedit_split.hparams import CAAHyperParams
from easyedit_split.integrations.pipeline import write_generation_results
from easyedit_split.interventions import DynamicWeightUpdate
from easyedit_split.storage.files import atomic_write_json
from easyedit_split.storage.units import intervention_metadata

FIXTURES = Path(__file__).parent / "fixtures" / "data"


def _strict_load(path: Path):
    """json.loads that refuses NaN/Infinity, as JavaScript's JSON.parse and jq do."""
    def refuse(token):
        raise ValueError(f"{path}: bare {token} is not JSON")
    return json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse)


@pytest.mark.parametrize("source, expected", [
    ("data/psychopathy/train.jsonl", "psychopathy"),
    ("/home/u/EasyEdit/data/psychopathy/test.jsonl", "psychopathy"),
    ("/home/u/EasyEdit/data/powerseeking/train.csv", "powerseeking"),
    ("/home/u/EasyEdit/data/axbench/axbench_train.parquet", "axbench_train"),  # EasyEdit's own key for this file
    ("/tmp/data/mine/train.jsonl", "mine"),  # any file directly in data/<dataset>/
    ("/tmp/work/pairs.jsonl", "pairs"),  # elsewhere: the file's stem
    ("sentiment", "sentiment"),
])
def test_dataset_name_follows_easyedit_layout(source, expected):
    assert dataset_name(source) == expected


def test_train_on_a_file_in_data_dataset_saves_under_the_dataset(tiny_chat_model, default_tokenizer, tmp_path):
    data_file = tmp_path / "EasyEdit" / "data" / "psychopathy" / "train.jsonl"
    data_file.parent.mkdir(parents=True)
    shutil.copy(FIXTURES / "psychopathy_sample.jsonl", data_file)
    out = tmp_path / "vectors"
    hparams = CAAHyperParams(layers=[1], steer_vector_output_dir=str(out), save_vectors=True)
    SteerEditor(hparams, model=tiny_chat_model, tokenizer=default_tokenizer).train(str(data_file))
    assert sorted(p.name for p in out.iterdir()) == ["psychopathy"]
    directory = out / "psychopathy" / "caa_vector"
    assert (directory / "layer_1.pt").exists()
    assert _strict_load(directory / "metadata.json")["dataset"] == "psychopathy"


@pytest.mark.parametrize("given", [["psychopathy"], ("psychopathy",), OmegaConf.create(["psychopathy"])])
def test_metadata_records_the_dataset_as_a_string(given, tmp_path):
    update = DynamicWeightUpdate.from_vector(torch.ones(4))
    meta = intervention_metadata({1: update}, dataset=given)
    path = atomic_write_json(tmp_path / "metadata.json", meta)
    assert _strict_load(path)["dataset"] == "psychopathy"
    assert dataset_label(["a", "b"]) == "a+b"


def test_omegaconf_values_are_written_as_json_lists_not_their_repr(tmp_path):
    path = atomic_write_json(tmp_path / "x.json", {"steer_train_dataset": OmegaConf.create(["psychopathy", "axbench"])})
    assert _strict_load(path) == {"steer_train_dataset": ["psychopathy", "axbench"]}


def test_json_files_have_null_with_a_reason_instead_of_nan(tmp_path):
    data = {"slope": float("nan"), "r2": 0.5, "curve": [1.0, float("inf"), float("-inf")], "nested": {"p": float("nan")}}
    loaded = _strict_load(atomic_write_json(tmp_path / "results.json", data))
    assert loaded["slope"] is None and "NaN" in loaded["slope_null_reason"]
    assert loaded["r2"] == 0.5 and "r2_null_reason" not in loaded
    assert loaded["curve"] == [1.0, None, None] and "[1, 2]" in loaded["curve_null_reason"]
    assert loaded["nested"]["p"] is None and loaded["nested"]["p_null_reason"]
    assert math.isnan(data["slope"])  # the caller's data is not modified


def test_generation_results_file_is_strict_json(tmp_path):
    path = write_generation_results([{"input": "q", "pred": ["a"], "score": float("nan")}], tmp_path, "psychopathy")
    assert path.name == "psychopathy_results.json"
    assert _strict_load(path) == [{"input": "q", "pred": ["a"], "score": None,
                                   "score_null_reason": "not a number (NaN): undefined for these inputs"}]
