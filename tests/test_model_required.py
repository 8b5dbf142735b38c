"""A missing model is an error that names the file and the ways to name one; the default model is used
only where a file or the user names it (EasyEdit's method files leave the model to the top-level config)."""
from __future__ import annotations

import json

import pytest

import easyedit_split.editor as editor_module
from easyedit_split.cli import main
from easyedit_split.editor import SteerEditor
from easyedit_split.errors import ModelError
from easyedit_split.hparams import CAAHyperParams, HyperParams, TopLevelConfig
from easyedit_split.cli.vectors import LoadedVectors, choose_model
from easyedit_split.models import load_model_and_tokenizer
from easyedit_split.storage.units import read_metadata

NO_MODEL = "alg_name: caa\nlayers: [1]\nuse_chat_template: true\n"


@pytest.fixture
def method_file(tmp_path):
    path = tmp_path / "generate_caa.yaml"
    path.write_text(NO_MODEL, encoding="utf-8")
    return path


@pytest.fixture
def no_loading(monkeypatch):
    """Record load calls instead of loading (the error must come before any model is loaded)."""
    calls = []
    monkeypatch.setattr(editor_module, "load_model_and_tokenizer", lambda *a, **k: calls.append((a, k)) or (_ for _ in ()).throw(AssertionError("loaded")))
    return calls


def test_hparams_have_no_default_model():
    assert HyperParams().model_name_or_path is None
    assert CAAHyperParams(layers=[1]).model_name_or_path is None


def test_editor_from_a_file_without_model_names_the_file_and_the_options(method_file, no_loading):
    with pytest.raises(ModelError) as info:
        SteerEditor.from_hparams(method_file)
    text = str(info.value)
    assert str(method_file) in text
    assert "--model" in text and "top-level config" in text and "model_name_or_path" in text and "smollm2-135m-instruct" in text
    assert no_loading == []


def test_editor_without_hparams_or_model_is_an_error(no_loading):
    with pytest.raises(ModelError, match="no model_name_or_path"):
        SteerEditor()


def test_load_model_with_no_name_is_an_error_not_the_default_model():
    with pytest.raises(ModelError, match="no model_name_or_path"):
        load_model_and_tokenizer(None)


def test_cli_train_without_model_exits_2_naming_the_file(method_file, capsys, no_loading):
    assert main(["train", "--hparams", str(method_file)]) == 2
    err = capsys.readouterr().err
    assert str(method_file) in err and "--model" in err
    assert no_loading == []


def test_cli_model_offline_device_and_dtype_reach_the_loader(method_file, monkeypatch, tiny_chat_model, default_tokenizer, tmp_path):
    calls = []

    def fake_load(name, dtype, device, offline=None, override_weights_path=None):
        calls.append((name, dtype, device, offline))
        return tiny_chat_model, default_tokenizer

    monkeypatch.setattr(editor_module, "load_model_and_tokenizer", fake_load)
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--hparams", str(method_file), "--model", "org/some-model", "--offline",
                 "--device", "cpu:0", "--dtype", "bfloat16"]) == 0
    assert calls == [("org/some-model", "bfloat16", "cpu:0", True)]


def test_top_level_config_supplies_the_model_of_an_easyedit_method_file(method_file, tmp_path):
    top = TopLevelConfig.from_hparams({"model_name_or_path": "google/gemma-2-9b-it", "steer_train_hparam_paths": [str(method_file)],
                                       "steer_vector_output_dirs": [str(tmp_path / "v")]})
    (merged,) = top.load_train_hparams(base_dir=tmp_path)
    assert merged.model_name_or_path == "google/gemma-2-9b-it"


def test_model_choice_order_and_recorded_model(tmp_path):
    directory = tmp_path / "caa_vector"
    directory.mkdir()
    (directory / "metadata.json").write_text(json.dumps({"model": "org/recorded"}), encoding="utf-8")
    vectors = LoadedVectors(directory, {}, read_metadata(directory))  # what load_vectors keeps of metadata.json
    assert choose_model("org/flag", "org/file", [vectors]) == "org/flag"
    assert choose_model(None, "org/file", [vectors]) == "org/file"
    assert choose_model(None, None, [vectors]) == "org/recorded"
    with pytest.raises(ModelError, match="evaluate: no model_name_or_path"):
        choose_model(None, None, [LoadedVectors(tmp_path, {}, read_metadata(tmp_path))], where="evaluate")
