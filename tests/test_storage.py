"""EasyEdit's on-disk layout: round trips, EasyEdit-built files, atomic writes, safe loads, clear errors."""
from __future__ import annotations

import os
import pickle

import pytest
import torch

from easyedit_split.errors import StorageError
from easyedit_split.interventions import DynamicWeightUpdate, steer
from easyedit_split.easyedit_layout import intervention_dir
from easyedit_split.storage.files import atomic_torch_save, safe_torch_load
from easyedit_split.storage.units import load_interventions, read_metadata, save_interventions


def _updates(model):
    torch.manual_seed(0)
    updates = {
        0: DynamicWeightUpdate.from_vector(torch.randn(model.config.hidden_size)),
        1: DynamicWeightUpdate.for_model(model, "lora", "mlp_mid", rank=3),
        2: DynamicWeightUpdate.for_model(model, "local_weight", "attn"),
    }
    with torch.no_grad():
        for update in updates.values():
            for p in update.parameters():
                p.normal_()
    return updates


def test_layout_matches_easyedit():
    assert str(intervention_dir("vecs", "psychopathy", "caa")) == os.path.join("vecs", "psychopathy", "caa_vector")
    assert str(intervention_dir("vecs", "psychopathy", "split", "lora")) == os.path.join("vecs", "psychopathy", "spilt_lora")
    assert str(intervention_dir("vecs", None, "reps", "vector")) == os.path.join("vecs", "reps_vector")


def test_round_trip_gives_identical_logits(tiny_model, token_batch, tmp_path):
    updates = _updates(tiny_model)
    save_interventions(tmp_path, updates, {"model": "tiny"})
    loaded = load_interventions(tmp_path, model=tiny_model)
    assert sorted(loaded) == [0, 1, 2]
    assert [loaded[k].method for k in (0, 1, 2)] == ["vector", "lora", "local_weight"]
    with torch.no_grad(), steer(tiny_model, updates, 1.3):
        expected = tiny_model(token_batch).logits
    with torch.no_grad(), steer(tiny_model, loaded, 1.3):
        got = tiny_model(token_batch).logits
    assert torch.equal(expected, got)
    assert read_metadata(tmp_path)["layers"] == [0, 1, 2]


def test_files_hold_easyedit_payloads(tiny_model, tmp_path):
    save_interventions(tmp_path, _updates(tiny_model))
    vector = torch.load(tmp_path / "layer_0.pt", weights_only=True)
    lora = torch.load(tmp_path / "layer_1.pt", weights_only=True)
    local = torch.load(tmp_path / "layer_2.pt", weights_only=True)
    assert vector.shape == (tiny_model.config.hidden_size,)
    assert set(lora) == {"lora_A", "lora_B", "r", "alpha", "intervention_components", "concept_id"}
    assert lora["lora_A"].shape == (tiny_model.config.intermediate_size, 3) and lora["r"] == 3
    assert set(local) == {"weight", "bias", "intervention_components", "concept_id"}
    assert local["intervention_components"] == "attn"


def test_easyedit_built_files_load(tiny_model, tmp_path):
    """Files built by hand in EasyEdit's documented format (stacked vectors, multi-concept dicts)."""
    hidden, inner = tiny_model.config.hidden_size, tiny_model.config.intermediate_size
    stacked = torch.randn(3, hidden)
    torch.save(stacked, tmp_path / "layer_1.pt")
    loaded = load_interventions(tmp_path, layers=[1], concept_id=2, model=tiny_model)
    assert torch.equal(loaded[1].bias, stacked[2])
    multi = {c: {"lora_A": torch.randn(inner, 2), "lora_B": torch.randn(2, hidden), "r": 2, "alpha": 32,
                 "intervention_components": "mlp_mid", "concept_id": c} for c in (0, 1)}
    torch.save(multi, tmp_path / "layer_2.pt")
    lora = load_interventions(tmp_path, layers=[2], concept_id=1, model=tiny_model)[2]
    assert torch.equal(lora.lora_A, multi[1]["lora_A"]) and lora.component == "mlp_mid"
    with pytest.raises(StorageError, match="concept_id 5"):
        load_interventions(tmp_path, layers=[2], concept_id=5)


def test_concept_updates_stack_like_easyedit(tiny_model, tmp_path):
    hidden = tiny_model.config.hidden_size
    concepts = {}
    for concept in (0, 1):  # one concept at a time, as a multi-concept run saves them
        concepts[concept] = DynamicWeightUpdate.from_vector(torch.full((hidden,), float(concept + 1)))
        save_interventions(tmp_path, {3: dict(concepts)})
    stacked = torch.load(tmp_path / "layer_3.pt", weights_only=True)
    assert stacked.shape == (2, hidden) and stacked[1, 0].item() == 2.0


def test_wrong_shape_and_model_are_clear_errors(tiny_model, tmp_path):
    torch.save(torch.randn(tiny_model.config.hidden_size + 1), tmp_path / "layer_0.pt")
    with pytest.raises(StorageError, match="hidden size"):
        load_interventions(tmp_path, model=tiny_model)
    other = tmp_path / "other"
    save_interventions(other, {0: DynamicWeightUpdate.from_vector(torch.zeros(tiny_model.config.hidden_size))},
                       {"hidden_size": 4096, "model": "big"})
    with pytest.raises(StorageError, match="4096"):
        load_interventions(other, model=tiny_model)
    with pytest.raises(StorageError, match="missing"):
        load_interventions(tmp_path, layers=[7])


def test_loading_never_unpickles_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    with open(tmp_path / "layer_0.pt", "wb") as handle:
        pickle.dump(Evil(), handle)
    with pytest.raises(StorageError, match="weights-only"):
        safe_torch_load(tmp_path / "layer_0.pt")
    assert not (tmp_path / "pwned").exists()


def test_atomic_write_keeps_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "layer_0.pt"
    atomic_torch_save(torch.ones(3), path)

    def broken_save(obj, target):
        with open(target, "wb") as handle:
            handle.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        atomic_torch_save(torch.zeros(3), path)
    monkeypatch.undo()
    assert torch.equal(torch.load(path, weights_only=True), torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["layer_0.pt"]
