"""Files cross between EasyEdit and this package: EasyEdit-format files apply here with EasyEdit's math,
and files written here load with a plain `torch.load(weights_only=True)` into EasyEdit's structures.

The EasyEdit-side files are built by hand from its documented format (zjunlp/EasyEdit@14cea82:
`steer/vector_generators/spilt/generate_spilt.py` writes them, `steer/vector_appliers/spilt/apply_spilt.py`
reads them): vector `[hidden]` or stacked `[n_concepts, hidden]`; lora `{lora_A [in, r], lora_B [r, hidden],
r, alpha, intervention_components, concept_id}`; local_weight `{weight [in, hidden], bias [hidden],
intervention_components, concept_id}`; multi-concept lora/local_weight `{concept_id: payload}`.
EasyEdit's apply math, reproduced by hand below: the layer output gets `m * v` (vector),
`x @ (m * A @ B)` (lora, no alpha scaling), `x @ (m * W) + m * b` (local_weight), with `x` the
input of the MLP down projection for `mlp_mid`.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import build_tiny_model
from easyedit_split.apply import apply_from_hparams
from easyedit_split.hparams import ApplySplitHyperParams
from easyedit_split.interventions import DynamicWeightUpdate
from easyedit_split.storage.units import save_interventions
from reference import hand_logits

LAYER, HIDDEN, INTER, RANK = 1, 32, 48, 2
LORA_KEYS = {"lora_A", "lora_B", "r", "alpha", "intervention_components", "concept_id"}
LOCAL_KEYS = {"weight", "bias", "intervention_components", "concept_id"}


@pytest.fixture
def model():
    return build_tiny_model("llama")


@pytest.fixture
def ids():
    return torch.randint(3, 97, (2, 7), generator=torch.Generator().manual_seed(0))


def _rand(*shape, seed=0, scale=0.5):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def _easyedit_lora(seed=1, concept_id=0):
    return {"lora_A": _rand(INTER, RANK, seed=seed), "lora_B": _rand(RANK, HIDDEN, seed=seed + 100), "r": RANK,
            "alpha": 32, "intervention_components": "mlp_mid", "concept_id": concept_id}


def _easyedit_local(seed=2, concept_id=0):
    return {"weight": _rand(INTER, HIDDEN, seed=seed, scale=0.1), "bias": _rand(HIDDEN, seed=seed + 100),
            "intervention_components": "mlp_mid", "concept_id": concept_id}


def _apply_hparams(directory, method, multiplier, concept_id=0):
    return ApplySplitHyperParams(alg_name="spilt", layers=[LAYER], multipliers=[multiplier], intervention_method=method,
                                 steer_vector_load_dir=str(directory), concept_id=concept_id)


def _by_hand(model, ids, delta_of):
    """Logits with EasyEdit's apply math written out: `delta_of(x_down_proj_input)` added to the layer output."""
    return hand_logits(model, ids, {LAYER: lambda x, h: delta_of(x)}, {LAYER: model.model.layers[LAYER].mlp.down_proj})


def _applied(model, ids, hparams):
    with apply_from_hparams(model, hparams), torch.no_grad():
        return model(ids).logits


# ============================================================================ EasyEdit files -> here


def test_easyedit_vector_applies_as_m_times_v(model, ids, tmp_path):
    vector = _rand(HIDDEN)
    torch.save(vector, tmp_path / f"layer_{LAYER}.pt")
    expected = _by_hand(model, ids, lambda x: 3.0 * vector)
    torch.testing.assert_close(_applied(model, ids, _apply_hparams(tmp_path, "vector", 3.0)), expected)


def test_easyedit_stacked_vectors_pick_the_concept_row(model, ids, tmp_path):
    stacked = torch.stack([_rand(HIDDEN, seed=s) for s in range(3)])
    torch.save(stacked, tmp_path / f"layer_{LAYER}.pt")
    expected = _by_hand(model, ids, lambda x: -2.0 * stacked[2])
    torch.testing.assert_close(_applied(model, ids, _apply_hparams(tmp_path, "vector", -2.0, concept_id=2)), expected)


def test_easyedit_lora_applies_as_x_at_m_a_b(model, ids, tmp_path):
    payload = _easyedit_lora()
    torch.save(payload, tmp_path / f"layer_{LAYER}.pt")
    expected = _by_hand(model, ids, lambda x: x @ (1.5 * payload["lora_A"] @ payload["lora_B"]))
    torch.testing.assert_close(_applied(model, ids, _apply_hparams(tmp_path, "lora", 1.5)), expected)


def test_easyedit_local_weight_applies_as_x_at_w_plus_b(model, ids, tmp_path):
    payload = _easyedit_local()
    torch.save(payload, tmp_path / f"layer_{LAYER}.pt")
    expected = _by_hand(model, ids, lambda x: x @ (2.0 * payload["weight"]) + 2.0 * payload["bias"])
    torch.testing.assert_close(_applied(model, ids, _apply_hparams(tmp_path, "local_weight", 2.0)), expected)


@pytest.mark.parametrize("method", ["lora", "local_weight"])
def test_easyedit_multi_concept_dicts_pick_the_concept(model, ids, tmp_path, method):
    make = _easyedit_lora if method == "lora" else _easyedit_local
    payloads = {0: make(seed=3, concept_id=0), 1: make(seed=7, concept_id=1)}
    torch.save(payloads, tmp_path / f"layer_{LAYER}.pt")
    chosen = payloads[1]
    if method == "lora":
        delta = lambda x: x @ (chosen["lora_A"] @ chosen["lora_B"])  # noqa: E731
    else:
        delta = lambda x: x @ chosen["weight"] + chosen["bias"]  # noqa: E731
    expected = _by_hand(model, ids, delta)
    torch.testing.assert_close(_applied(model, ids, _apply_hparams(tmp_path, method, 1.0, concept_id=1)), expected)


def test_easyedit_file_without_metadata_loads(model, ids, tmp_path):
    """EasyEdit writes no metadata.json; nothing here requires it, and the vector acts as m * v."""
    vector = _rand(HIDDEN, seed=7)
    torch.save(vector, tmp_path / f"layer_{LAYER}.pt")
    assert not (tmp_path / "metadata.json").exists()
    got = _applied(model, ids, _apply_hparams(tmp_path, "vector", -2.0))
    torch.testing.assert_close(got, _by_hand(model, ids, lambda x: -2.0 * vector))
    with torch.no_grad():
        assert (got - model(ids).logits).abs().max() > 1e-3  # it did steer


# ============================================================================ here -> EasyEdit's structures


def _plain_load(path: Path):
    return torch.load(path, map_location="cpu", weights_only=True)


def test_written_vector_is_a_plain_hidden_tensor(tmp_path):
    vector = _rand(HIDDEN)
    save_interventions(tmp_path, {LAYER: DynamicWeightUpdate.from_vector(vector)})
    loaded = _plain_load(tmp_path / f"layer_{LAYER}.pt")
    assert type(loaded) is torch.Tensor and loaded.shape == (HIDDEN,) and torch.equal(loaded, vector)


def test_written_lora_has_exactly_easyedits_keys(tmp_path):
    easyedit = _easyedit_lora()
    update = DynamicWeightUpdate.from_lora(easyedit["lora_A"], easyedit["lora_B"], component="mlp_mid", alpha=32)
    save_interventions(tmp_path, {LAYER: update}, concept_id=0)
    loaded = _plain_load(tmp_path / f"layer_{LAYER}.pt")
    assert type(loaded) is dict and set(loaded) == LORA_KEYS
    assert loaded["lora_A"].shape == (INTER, RANK) and loaded["lora_B"].shape == (RANK, HIDDEN)
    assert torch.equal(loaded["lora_A"], easyedit["lora_A"]) and torch.equal(loaded["lora_B"], easyedit["lora_B"])
    assert loaded["r"] == RANK and loaded["alpha"] == 32
    assert loaded["intervention_components"] == "mlp_mid" and loaded["concept_id"] == 0
    # EasyEdit's applier reads these with `data_state["lora_A"].shape[0]` etc.
    assert isinstance(loaded["r"], int) and isinstance(loaded["concept_id"], int)


def test_written_local_weight_has_exactly_easyedits_keys(tmp_path):
    easyedit = _easyedit_local()
    update = DynamicWeightUpdate.from_local_weight(easyedit["weight"], easyedit["bias"], component="mlp_mid")
    save_interventions(tmp_path, {LAYER: update})
    loaded = _plain_load(tmp_path / f"layer_{LAYER}.pt")
    assert type(loaded) is dict and set(loaded) == LOCAL_KEYS
    assert torch.equal(loaded["weight"], easyedit["weight"]) and torch.equal(loaded["bias"], easyedit["bias"])


def test_written_multi_concept_files_are_easyedits_layout(tmp_path):
    vectors = tmp_path / "vector"
    concepts = {}
    for concept_id in (0, 1, 2):  # one concept at a time, as a multi-concept run saves them
        concepts[concept_id] = DynamicWeightUpdate.from_vector(_rand(HIDDEN, seed=concept_id))
        save_interventions(vectors, {LAYER: dict(concepts)})
    stacked = _plain_load(vectors / f"layer_{LAYER}.pt")
    assert type(stacked) is torch.Tensor and stacked.shape == (3, HIDDEN)
    assert torch.equal(stacked[1], _rand(HIDDEN, seed=1))

    loras = tmp_path / "lora"
    concepts = {}
    for concept_id in (0, 1):
        easyedit = _easyedit_lora(seed=10 + concept_id)
        concepts[concept_id] = DynamicWeightUpdate.from_lora(easyedit["lora_A"], easyedit["lora_B"], component="mlp_mid",
                                                             alpha=32)
        save_interventions(loras, {LAYER: dict(concepts)})
    by_concept = _plain_load(loras / f"layer_{LAYER}.pt")
    assert set(by_concept) == {0, 1} and all(set(p) == LORA_KEYS for p in by_concept.values())
    assert by_concept[1]["concept_id"] == 1  # EasyEdit's applier: `data_states[concept_id]`


def test_round_trip_through_both_formats_is_exact(model, ids, tmp_path):
    """An EasyEdit file loaded here, written back, read as EasyEdit would: same payload, same logits."""
    from easyedit_split.storage.units import load_interventions

    payload = _easyedit_local(seed=5)
    source = tmp_path / "easyedit"
    source.mkdir()
    torch.save(payload, source / f"layer_{LAYER}.pt")
    updates = load_interventions(source, layers=[LAYER])
    save_interventions(tmp_path / "ours", updates)
    again = _plain_load(tmp_path / "ours" / f"layer_{LAYER}.pt")
    assert torch.equal(again["weight"], payload["weight"]) and torch.equal(again["bias"], payload["bias"])
    torch.testing.assert_close(_applied(model, ids, _apply_hparams(tmp_path / "ours", "local_weight", 1.0)),
                               _applied(model, ids, _apply_hparams(source, "local_weight", 1.0)), rtol=0, atol=0)
