"""EasyEdit's experiment tree: paths (storage), data file tables (data), run expansion (pipeline)."""
from __future__ import annotations

from pathlib import Path

import pytest

from easyedit_split import easyedit_layout
from easyedit_split.easyedit_layout import EASYEDIT_TRAIN_FILES, easyedit_data_file
from easyedit_split.errors import DatasetError
from easyedit_split.integrations.pipeline import expand_runs, resolve_data

REPO = Path(__file__).resolve().parent.parent


def test_paths_follow_easyedits_run_spilt_layout():
    assert easyedit_layout.experiment_vectors_dir("out", "m", "split", "d", "lora") == Path("out/vectors/m/spilt/d/spilt_lora")
    assert easyedit_layout.experiment_vectors_dir("out", "m", "caa", "d", "vector") == Path("out/vectors/m/caa/d/caa_vector")
    assert easyedit_layout.experiment_generation_dir("out", "m", "SPLIT", "d", "vector", 2.0) == Path("out/generation/m/spilt/d/spilt_vector/m2.0")
    assert easyedit_layout.loss_output_dir("out", "m", "sft", "d", "lora", 1.0, "winning_only") == Path(
        "out/vectors/m/get_sft_loss/sft/d/sft_lora/lora_sft_m1.0_winning_only")


def test_hparams_files_are_found_in_the_shipped_tree():
    found = easyedit_layout.find_train_hparams(REPO, "sentiment", "smollm2-135m-instruct", "split", "vector")
    assert found == REPO / "hparams/sentiment/smollm2-135m-instruct/spilt/generate_spilt_vector.yaml"
    assert easyedit_layout.find_train_hparams(REPO, "sentiment", "smollm2-135m-instruct", "caa", "vector").name == "generate_caa.yaml"
    assert easyedit_layout.find_apply_hparams(REPO, "sentiment", "smollm2-135m-instruct", "sft").name == "apply_sft.yaml"
    assert easyedit_layout.find_loss_hparams(REPO, "sentiment", "smollm2-135m-instruct").name == "generate_sft_loss.yaml"
    assert easyedit_layout.find_train_hparams(REPO, "sentiment", "no-such-model", "caa", "vector") is None


def test_easyedit_data_files_and_a_missing_one_says_where(tmp_path):
    assert easyedit_data_file(EASYEDIT_TRAIN_FILES, "psychopathy", "/ee") == Path("/ee/data/psychopathy/train.jsonl")
    assert easyedit_data_file(EASYEDIT_TRAIN_FILES, "sentiment", "/ee") is None
    assert resolve_data("sentiment", tmp_path) == "sentiment"  # shipped: no file needed
    with pytest.raises(DatasetError, match="psychopathy/train.jsonl"):
        resolve_data("psychopathy", tmp_path)


def test_all_expands_to_easyedits_method_names_and_caa_has_only_vectors():
    runs = expand_runs("all", "all")
    assert ("caa", "vector") in runs and ("caa", "lora") not in runs
    assert ("spilt", "local_weight") in runs and len(runs) == 1 + 3 * 3
