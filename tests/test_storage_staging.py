"""Nothing of the user's is lost by a save: foreign files are never deleted, an interrupted re-save
(Ctrl-C at any step, a full disk) leaves the earlier complete unit loadable, a NaN update is refused.

Expectations: interrupts injected at every step of the staging and of the swap (the save-delay hook,
the directory exchange, each rename of the portable swap), a write that raises ENOSPC, and after
each: the directory loads as exactly the old unit or exactly the new one, never a mix.
"""
from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch

from easyedit_split.errors import StorageError
from easyedit_split.interventions import DynamicWeightUpdate
from easyedit_split.steering import SteeringInterventions
from easyedit_split.storage import staging, units
from easyedit_split.storage.units import (
    LOCK_FILE, MANIFEST_FILE, METADATA_FILE, load_interventions, read_manifest, read_metadata, save_interventions,
)

HIDDEN = 32


def _vec(seed: int) -> DynamicWeightUpdate:
    return DynamicWeightUpdate.from_vector(torch.randn(HIDDEN, generator=torch.Generator().manual_seed(seed)))


OLD = {1: _vec(0), 2: _vec(1)}
NEW = {2: _vec(2), 5: _vec(3)}


def _state(directory: Path) -> str:
    """'old', 'new' or 'refused': what a loader sees; a mix of the two units fails the test."""
    try:
        loaded = load_interventions(directory)
    except StorageError:
        return "refused"
    meta = read_metadata(directory)
    for name, units_ in (("old", OLD), ("new", NEW)):
        if sorted(loaded) == sorted(units_) and all(torch.equal(loaded[k].bias, units_[k].bias) for k in loaded):
            assert meta["tag"] == name, f"layer files of the {name} unit under other metadata"
            return name
    raise AssertionError(f"a mix loaded: layers {sorted(loaded)}, metadata {meta.get('tag')}")


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.parent.iterdir() if p.name.startswith(f".{directory.name}."))


# ----------------------------------------------------------------------------- foreign files


def test_a_users_layer_file_in_an_easyedit_folder_is_never_deleted(tmp_path):
    directory = tmp_path / "caa_vector"
    directory.mkdir()
    theirs = torch.randn(HIDDEN)
    torch.save(theirs, directory / "layer_3.pt")
    before = (directory / "layer_3.pt").read_bytes()
    with pytest.raises(StorageError, match="layer_3.pt: not written by easyedit_split") as info:
        save_interventions(directory, {15: _vec(0)})
    assert "Move it elsewhere, or save into another directory" in str(info.value)
    assert (directory / "layer_3.pt").read_bytes() == before
    assert sorted(p.name for p in directory.iterdir()) == ["layer_3.pt"]  # nothing written, no lock left
    assert _leftovers(directory) == []
    with pytest.raises(StorageError, match="layer_3.pt"):
        save_interventions(directory, {3: _vec(0)})  # other values under the same name: shadowing it is refused too
    assert (directory / "layer_3.pt").read_bytes() == before


def test_a_foreign_file_with_exactly_the_bytes_of_the_save_is_adopted(tmp_path):
    """EasyEdit's layer_3.pt loaded and saved back unchanged: nothing is lost, the directory gets sealed."""
    directory = tmp_path / "caa_vector"
    directory.mkdir()
    torch.save(_vec(5).bias.detach().clone(), directory / "layer_3.pt")  # a plain tensor, as EasyEdit saves
    SteeringInterventions.load(directory).save(directory)
    assert read_manifest(directory)["complete"] and torch.equal(load_interventions(directory)[3].bias, _vec(5).bias)


@pytest.mark.parametrize("name,content", [("train_state_layer_4.json", '{"finished_concepts": [0]}'),
                                          (METADATA_FILE, '{"mine": true}'),
                                          (MANIFEST_FILE, '{"format": "something else"}'),
                                          ("layer_x.pt", "not ours"), ("layer_2.pt", "edited since")])
def test_foreign_files_under_names_a_loader_reads_are_refused(tmp_path, name, content):
    directory = tmp_path / "out"
    save_interventions(directory, OLD, {"tag": "old"})
    if name == MANIFEST_FILE:
        for path in directory.iterdir():
            path.unlink()
    (directory / name).write_text(content)
    with pytest.raises(StorageError, match=name.replace(".", r"\.")):
        save_interventions(directory, NEW, {"tag": "new"})
    assert (directory / name).read_text() == content
    assert not [p for p in directory.iterdir() if p.name.startswith(".")] and _leftovers(directory) == []


def test_unrelated_user_files_survive_every_resave(tmp_path):
    directory = tmp_path / "out"
    directory.mkdir()
    (directory / "README.txt").write_text("my notes")
    (directory / "plots").mkdir()
    (directory / "plots" / "a.png").write_bytes(b"png")
    save_interventions(directory, OLD, {"tag": "old"})
    save_interventions(directory, NEW, {"tag": "new"})
    assert _state(directory) == "new"
    assert (directory / "README.txt").read_text() == "my notes" and (directory / "plots" / "a.png").read_bytes() == b"png"
    assert not (directory / "layer_1.pt").exists()  # the package's own old layer file is dropped
    assert _leftovers(directory) == [] and not (directory / LOCK_FILE).exists()


def test_the_package_replaces_its_own_files(tmp_path):
    directory = tmp_path / "out"
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "README.txt").write_text("x")
    save_interventions(directory, OLD, {"tag": "old"})
    save_interventions(directory, NEW, {"tag": "new"})
    assert _state(directory) == "new" and sorted(p.name for p in directory.iterdir()) == sorted(
        ["layer_2.pt", "layer_5.pt", METADATA_FILE, MANIFEST_FILE])


# ----------------------------------------------------------------------------- interrupts


def _interrupt_at(monkeypatch, target, attribute: str, at: int, error: BaseException) -> list[int]:
    calls = [0]
    real = getattr(target, attribute)

    def hook(*args, **kwargs):
        calls[0] += 1
        if calls[0] == at:
            raise error
        return real(*args, **kwargs)

    monkeypatch.setattr(target, attribute, hook)
    return calls


@pytest.mark.parametrize("at", [1, 2, 3])
def test_ctrl_c_while_staging_leaves_the_old_unit(tmp_path, monkeypatch, at):
    """The save-delay hook runs before each layer file and before the swap (3 calls for NEW)."""
    directory = tmp_path / "out"
    (directory.mkdir(), (directory / "README.txt").write_text("mine"))
    save_interventions(directory, OLD, {"tag": "old"})
    _interrupt_at(monkeypatch, units, "_save_delay", at, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        save_interventions(directory, NEW, {"tag": "new"})
    assert _state(directory) == "old" and (directory / "README.txt").read_text() == "mine"
    assert _leftovers(directory) == [] and not (directory / LOCK_FILE).exists()
    save_interventions(directory, NEW, {"tag": "new"})
    assert _state(directory) == "new"


@pytest.mark.parametrize("when", ["exchange", "after-exchange"])
def test_ctrl_c_at_the_swap_leaves_one_complete_unit(tmp_path, monkeypatch, when):
    directory = tmp_path / "out"
    save_interventions(directory, OLD, {"tag": "old"})
    (directory / "README.txt").write_text("mine")
    if when == "exchange":
        _interrupt_at(monkeypatch, staging, "exchange", 1, KeyboardInterrupt())
    else:
        _interrupt_at(monkeypatch, staging, "remove_unit_copy", 1, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        save_interventions(directory, NEW, {"tag": "new"})
    assert _state(directory) == ("old" if when == "exchange" else "new")
    assert (directory / "README.txt").read_text() == "mine"
    monkeypatch.undo()
    save_interventions(directory, NEW, {"tag": "new"})  # the next save cleans what was left beside it
    assert _state(directory) == "new" and _leftovers(directory) == []


@pytest.mark.parametrize("at", range(1, 6))
def test_ctrl_c_during_the_portable_swap_never_loads_a_mix(tmp_path, monkeypatch, at):
    """Without the atomic exchange (other systems, a user's sub-directory in the target): the old unit
    stays whole in `.<name>.previous-<pid>` while files are renamed in, the manifest last."""
    directory = tmp_path / "out"
    save_interventions(directory, OLD, {"tag": "old"})
    monkeypatch.setattr(staging, "exchange", lambda a, b: (_ for _ in ()).throw(OSError(errno.ENOSYS, "no")))
    calls = _interrupt_at(monkeypatch, staging, "replace", at, KeyboardInterrupt())
    try:
        save_interventions(directory, NEW, {"tag": "new"})
    except KeyboardInterrupt:
        pass
    assert calls[0] >= min(at, 4)
    seen = _state(directory)
    if at <= 4:  # 3 new files, then the manifest: interrupted before the manifest's rename
        previous = staging.staging_dir(directory.resolve(), "previous")
        assert seen in ("old", "refused")
        if seen == "refused":
            with pytest.raises(StorageError, match=r"previous complete result is in .*previous-"):
                load_interventions(directory)
            assert _state(previous) == "old"
    else:
        assert seen == "new"
    monkeypatch.undo()
    save_interventions(directory, NEW, {"tag": "new"})
    assert _state(directory) == "new" and _leftovers(directory) == []


# ----------------------------------------------------------------------------- a full disk


def test_a_full_disk_leaves_the_old_unit_and_says_so(tmp_path, monkeypatch):
    directory = tmp_path / "out"
    save_interventions(directory, OLD, {"tag": "old"})
    real = torch.save

    def full(obj, path, *args, **kwargs):
        Path(path).write_bytes(b"PK\x03\x04 half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(StorageError) as info:
        save_interventions(directory, NEW, {"tag": "new"})
    message = str(info.value)
    assert "no space left" in message and "layer_" in message and str(directory) in message
    assert "Free disk space, or save into another directory" in message
    monkeypatch.setattr(torch, "save", real)
    assert _state(directory) == "old" and _leftovers(directory) == [] and not (directory / LOCK_FILE).exists()


def test_torchs_bare_writer_error_on_a_full_disk_is_named(tmp_path, monkeypatch):
    """torch reports a full disk as RuntimeError('... inline_container ... file write failed')."""
    directory = tmp_path / "out"
    save_interventions(directory, OLD, {"tag": "old"})

    def full(obj, path, *args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:664] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed")

    monkeypatch.setattr(torch, "save", full)
    monkeypatch.setattr(staging.shutil, "disk_usage", lambda path: type("U", (), {"free": 0})())
    with pytest.raises(StorageError, match="no space left on device"):
        save_interventions(directory, NEW, {"tag": "new"})
    monkeypatch.undo()
    assert _state(directory) == "old"


def test_a_full_disk_while_writing_metadata_leaves_the_old_unit(tmp_path, monkeypatch):
    directory = tmp_path / "out"
    save_interventions(directory, OLD, {"tag": "old"})
    _interrupt_at(monkeypatch, units, "atomic_write_json", 1, OSError(errno.ENOSPC, "No space left on device"))
    with pytest.raises(StorageError, match=r"metadata\.json: no space left on device"):
        save_interventions(directory, NEW, {"tag": "new"})
    monkeypatch.undo()
    assert _state(directory) == "old"


# ----------------------------------------------------------------------------- non-finite updates


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_vector_is_refused_before_anything_is_written(tmp_path, bad):
    directory = tmp_path / "out"
    save_interventions(directory, OLD, {"tag": "old"})
    vector = _vec(9).bias.detach().clone()
    vector[4] = bad
    with pytest.raises(StorageError, match="layer 7: the update's .* NaN or inf"):
        save_interventions(directory, {7: DynamicWeightUpdate.from_vector(vector)}, {"tag": "new"})
    with pytest.raises(StorageError, match="layer 7"):
        SteeringInterventions({7: DynamicWeightUpdate.from_vector(vector)}).save(tmp_path / "fresh")
    assert not (tmp_path / "fresh").exists() and _state(directory) == "old"


def test_a_non_finite_concept_and_lora_are_named(tmp_path, tiny_model):
    vector = _vec(9).bias.detach().clone()
    vector[0] = float("nan")
    with pytest.raises(StorageError, match=r"layer 3, concept\(s\) \[2\]"):
        save_interventions(tmp_path / "a", {3: {0: _vec(0), 2: DynamicWeightUpdate.from_vector(vector)}})
    lora = DynamicWeightUpdate.for_model(tiny_model, "lora", "mlp_mid", rank=2)
    with torch.no_grad():
        lora.lora_B.fill_(float("inf"))
    with pytest.raises(StorageError, match=r"layer 1, concept 4: the update's \['lora_B'\]"):
        save_interventions(tmp_path / "b", {1: {4: lora}})
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
