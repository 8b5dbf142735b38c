"""Every file a complete manifest lists is checked on every load path: layer files, metadata.json and
resume states, through the Python API and the command line.

Expectations: files edited by hand after a save (one changed value, same or other size); a loader
must refuse them, naming the file, instead of loading edited metadata with exit 0.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from easyedit_split.cli import main
from easyedit_split.errors import StorageError
from easyedit_split.interventions import DynamicWeightUpdate
from easyedit_split.steering import SteeringInterventions
from easyedit_split.storage.units import (
    MANIFEST_FILE, METADATA_FILE, listed_layers, load_interventions, read_manifest, read_metadata, save_interventions,
    train_state_file,
)

HIDDEN = 32


def _vec(seed: int) -> DynamicWeightUpdate:
    return DynamicWeightUpdate.from_vector(torch.randn(HIDDEN, generator=torch.Generator().manual_seed(seed)))


def _saved(tmp_path: Path) -> Path:
    directory = tmp_path / "caa_vector"
    save_interventions(directory, {1: _vec(0)}, {"model": "tiny-a", "hparams": {"lr": 0.08}})
    return directory


def _edit_metadata(directory: Path, same_size: bool) -> None:
    text = (directory / METADATA_FILE).read_text()
    edited = text.replace("tiny-a", "tiny-b") if same_size else text.replace("0.08", "0.01000")
    assert edited != text and (len(edited) == len(text)) == same_size
    (directory / METADATA_FILE).write_text(edited)


@pytest.mark.parametrize("same_size", [True, False])
def test_edited_metadata_is_refused_by_every_python_loader(tmp_path, same_size):
    directory = _saved(tmp_path)
    assert read_manifest(directory)["files"][METADATA_FILE]["sha256"]
    _edit_metadata(directory, same_size)
    for load in (load_interventions, SteeringInterventions.load, listed_layers, read_metadata):
        with pytest.raises(StorageError, match="metadata.json") as info:
            load(directory)
        assert str(directory / METADATA_FILE) in str(info.value)
        assert "re-run the training" in str(info.value) or "restore it" in str(info.value)


def test_an_untouched_directory_still_loads(tmp_path):
    directory = _saved(tmp_path)
    assert read_metadata(directory)["model"] == "tiny-a"
    assert torch.equal(load_interventions(directory)[1].bias, _vec(0).bias)


@pytest.mark.parametrize("command", [
    ["generate", "--vectors", "{d}", "--prompt", "hi"],
    ["evaluate", "{d}", "--dataset", "sentiment"],
    ["evaluate", "--vectors", "name={d}", "--dataset", "sentiment"],
])
def test_edited_metadata_is_refused_by_the_command_line(tmp_path, capsys, command):
    directory = _saved(tmp_path)
    _edit_metadata(directory, same_size=True)
    assert main([part.format(d=directory) for part in command]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and str(directory / METADATA_FILE) in err and "SHA-256" in err


def test_an_edited_resume_state_is_refused(tmp_path):
    directory = tmp_path / "spilt_vector"
    save_interventions(directory, {3: {0: _vec(0), 1: _vec(1)}}, train_state={3: [0, 1]}, alg_name="spilt")
    state = train_state_file(directory, 3)
    assert state.name in read_manifest(directory)["files"]
    state.write_text(state.read_text().replace("0, 1", "1, 0").replace("[\n    0,\n    1\n  ]", "[\n    1,\n    0\n  ]"))
    with pytest.raises(StorageError, match=state.name):
        load_interventions(directory)


def test_a_listed_file_that_is_gone_is_named(tmp_path):
    directory = _saved(tmp_path)
    (directory / METADATA_FILE).unlink()
    with pytest.raises(StorageError, match=r"metadata\.json: missing, though manifest\.json lists it"):
        load_interventions(directory)


def test_a_manifest_entry_without_checksum_is_refused(tmp_path):
    directory = _saved(tmp_path)
    manifest = json.loads((directory / MANIFEST_FILE).read_text())
    del manifest["files"][METADATA_FILE]["sha256"]
    (directory / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(StorageError, match="no SHA-256 recorded for metadata.json"):
        load_interventions(directory)
