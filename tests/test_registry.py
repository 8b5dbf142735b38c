"""The one method table: names, aliases, EasyEdit directory names, hparams classes, train/apply functions."""
from __future__ import annotations

import pytest

from easyedit_split import registry
from easyedit_split.errors import HparamsError
from easyedit_split.hparams import (
    ApplyCAAHyperParams,
    ApplyRePSHyperParams,
    ApplySFTHyperParams,
    ApplySplitHyperParams,
    CAAHyperParams,
    RePSHyperParams,
    SFTHyperParams,
    SplitHyperParams,
    load_hparams,
)

CLASSES = {
    "caa": (CAAHyperParams, ApplyCAAHyperParams),
    "sft": (SFTHyperParams, ApplySFTHyperParams),
    "reps": (RePSHyperParams, ApplyRePSHyperParams),
    "split": (SplitHyperParams, ApplySplitHyperParams),
}


def test_the_table_lists_the_four_methods_of_constants():
    from easyedit_split.constants import METHOD_NAMES

    assert tuple(registry.METHODS) == METHOD_NAMES == ("caa", "sft", "reps", "split")


@pytest.mark.parametrize("alg_name", ["caa", "sft", "reps", "split"])
def test_each_method_has_its_train_and_apply_classes(alg_name):
    train, apply = CLASSES[alg_name]
    assert registry.hparams_class(alg_name, "train") is train
    assert registry.hparams_class(alg_name, "apply") is apply
    assert train.ALG_NAMES == apply.ALG_NAMES == registry.get_method(alg_name).names


@pytest.mark.parametrize("spelling", ["spilt", "SPILT", " split ", "Split"])
def test_spilt_and_other_spellings_select_split(spelling):
    assert registry.get_method(spelling).alg_name == "split"


def test_aliases_and_names():
    assert registry.get_method("split").aliases == ("spilt",)
    assert registry.get_method("split").names == ("split", "spilt")
    assert registry.get_method("caa").aliases == ()
    assert registry.known_names() == ["caa", "sft", "reps", "split", "spilt"]


@pytest.mark.parametrize("alg_name, directory", [("caa", "caa"), ("sft", "sft"), ("reps", "reps"), ("split", "spilt"),
                                                 ("spilt", "spilt")])
def test_easyedit_directory_names(alg_name, directory):
    assert registry.get_method(alg_name).easyedit_dir_name == directory


@pytest.mark.parametrize("typo, closest", [("splt", "split"), ("rep", "reps"), ("cca", "caa")])
def test_unknown_name_suggests_the_closest(typo, closest):
    with pytest.raises(HparamsError, match=f"unknown method '{typo}'.*did you mean '{closest}'"):
        registry.get_method(typo)


def test_unknown_name_far_from_all_lists_the_known_ones():
    with pytest.raises(HparamsError, match="known: caa, sft, reps, split, spilt") as info:
        registry.get_method("banana")
    assert "did you mean" not in str(info.value)
    assert registry.find_method("banana") is None and registry.find_hparams_class("banana", "train") is None


def test_bad_kind_is_an_error():
    with pytest.raises(HparamsError, match="kind"):
        registry.hparams_class("caa", "generate")


def test_load_hparams_reports_unknown_alg_name_with_file_and_closest(tmp_path):
    path = tmp_path / "gen.yaml"
    path.write_text("alg_name: spit\nlayers: [1]\n", encoding="utf-8")
    with pytest.raises(HparamsError, match=r"gen\.yaml.*'spit'.*did you mean 'split'"):
        load_hparams(path)


def test_train_and_apply_functions_resolve():
    from easyedit_split.apply import apply_from_hparams
    from easyedit_split.methods import split

    spec = registry.get_method("spilt")
    assert spec.train_function() is split.train
    assert spec.apply_function() is apply_from_hparams
    assert registry.get_method("caa").trained is False


def test_importing_the_registry_and_hparams_loads_no_torch():
    import subprocess
    import sys

    code = "import sys, easyedit_split.registry, easyedit_split.hparams; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
