"""The intervention against hand-written hooks: `h + m * (x @ dW + db)` added by plain PyTorch.

The expected outputs never go through `easyedit_split.interventions`: the reference hook of
tests/reference.py adds `m * v` (or `m * (x @ A @ B)`, `m * (x @ W + b)`) to the decoder layer's
output, and the library's steered model must give the same logits. Flipping the sign of the delta,
steering the wrong layer or position, or reading the wrong input changes these numbers.
"""
from __future__ import annotations

import pytest
import torch

from conftest import build_tiny_model
from easyedit_split.interventions import DynamicWeightUpdate, InterventionHandle, attach, steer
from reference import hand_logits


LAYER = 1


@pytest.fixture(scope="module")
def model():
    return build_tiny_model("llama")


@pytest.fixture(scope="module")
def ids():
    return torch.randint(3, 97, (3, 7), generator=torch.Generator().manual_seed(5))


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _logits(model, ids, updates, multiplier, positions=None):
    with torch.no_grad(), steer(model, updates, multiplier, positions):
        return model(ids).logits


@pytest.mark.parametrize("m", [2.5, -1.5])
def test_vector_adds_m_times_v_to_the_layer_output(model, ids, m):
    v = _rand(32, seed=1)
    expected = hand_logits(model, ids, {LAYER: lambda x, h: m * v})
    got = _logits(model, ids, {LAYER: DynamicWeightUpdate.from_vector(v)}, m)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    flipped = hand_logits(model, ids, {LAYER: lambda x, h: -m * v})
    assert (got - flipped).abs().max() > 1e-2  # the anchor tells the two signs apart


def test_lora_reads_the_down_projection_input(model, ids):
    a, b = _rand(48, 2, seed=2), _rand(2, 32, seed=3) * 0.3
    m = -0.7
    down = model.model.layers[LAYER].mlp.down_proj
    expected = hand_logits(model, ids, {LAYER: lambda x, h: m * (x @ a @ b)}, {LAYER: down})
    got = _logits(model, ids, {LAYER: DynamicWeightUpdate.from_lora(a, b, component="mlp_mid")}, m)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("component, path", [("mlp_mid", "mlp.down_proj"), ("mlp", "mlp"), ("attn", "self_attn"), ("block", "")])
def test_local_weight_reads_its_component_input(model, ids, component, path):
    layer_module = model.model.layers[LAYER]
    module = layer_module
    for part in filter(None, path.split(".")):
        module = getattr(module, part)
    width = 48 if component == "mlp_mid" else 32
    w, bias = _rand(width, 32, seed=4) * 0.2, _rand(32, seed=5)
    m = 1.3
    expected = hand_logits(model, ids, {LAYER: lambda x, h: m * (x @ w + bias)}, {LAYER: module})
    update = DynamicWeightUpdate.from_local_weight(w, bias, component=component)
    torch.testing.assert_close(_logits(model, ids, {LAYER: update}, m), expected, rtol=1e-5, atol=1e-5)


def test_per_row_multipliers_equal_separate_hand_runs(model, ids):
    v = _rand(32, seed=6)
    ms = [1.0, -2.0, 0.0]
    got = _logits(model, ids, {LAYER: DynamicWeightUpdate.from_vector(v)}, torch.tensor(ms))
    for row, m in enumerate(ms):
        expected = hand_logits(model, ids[row : row + 1], {LAYER: lambda x, h: m * v})
        torch.testing.assert_close(got[row : row + 1], expected, rtol=1e-5, atol=1e-5)


def test_positions_mask_steers_only_the_marked_positions(model, ids):
    v = _rand(32, seed=7)
    positions = torch.zeros(3, 7)
    positions[:, 4:] = 1  # positions 0..3 unsteered, 4..6 steered
    mask = positions.unsqueeze(-1)
    expected = hand_logits(model, ids, {LAYER: lambda x, h: 2.0 * v * mask})
    got = _logits(model, ids, {LAYER: DynamicWeightUpdate.from_vector(v)}, 2.0, positions)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    plain = hand_logits(model, ids, {LAYER: lambda x, h: 0 * h})
    # causal model: positions before the first steered one see nothing of the delta
    torch.testing.assert_close(got[:, :4], plain[:, :4], rtol=0, atol=0)
    assert (got[:, 4:] - plain[:, 4:]).abs().amax(dim=-1).min() > 1e-3


def test_positions_of_another_shape_are_ignored(model, ids):
    """A [batch, seq] mask that does not match the hidden states (decoding steps) steers everywhere."""
    v = _rand(32, seed=8)
    expected = hand_logits(model, ids, {LAYER: lambda x, h: 1.5 * v})
    got = _logits(model, ids, {LAYER: DynamicWeightUpdate.from_vector(v)}, 1.5, torch.zeros(3, 4))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_two_layers_each_add_their_own_vector(model, ids):
    v1, v3 = _rand(32, seed=9), _rand(32, seed=10)
    expected = hand_logits(model, ids, {1: 0.5 * v1, 3: 0.5 * v3})
    updates = {1: DynamicWeightUpdate.from_vector(v1), 3: DynamicWeightUpdate.from_vector(v3)}
    torch.testing.assert_close(_logits(model, ids, updates, 0.5), expected, rtol=1e-5, atol=1e-5)


def test_null_it_out_removes_the_positive_component_by_hand(model, ids):
    v = _rand(32, seed=11)

    def project(x, h):  # h' - h = -relu(h . v) / |v|^2 * v, per position
        return -torch.relu(h @ v).unsqueeze(-1) / (v @ v) * v

    expected = hand_logits(model, ids, {LAYER: project})
    handle = InterventionHandle(model, {LAYER: DynamicWeightUpdate.from_vector(v)}, 0.0, null_out=torch.ones(3, dtype=torch.bool))
    try:
        with torch.no_grad():
            got = model(ids).logits
    finally:
        handle.remove()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_apply_formula_on_hand_tensors():
    """`apply` alone: h + m * v * p, then null-out on the selected rows only."""
    v = torch.tensor([1.0, 2.0])
    update = DynamicWeightUpdate.from_vector(v)
    hidden = torch.tensor([[[1.0, 1.0], [-3.0, 0.0]], [[0.0, 1.0], [2.0, 2.0]]])
    positions = torch.tensor([[0.0, 1.0], [1.0, 1.0]])
    got = update.apply(hidden, None, torch.tensor([2.0, -1.0]).view(-1, 1, 1), positions)
    expected = torch.tensor([[[1.0, 1.0], [-1.0, 4.0]], [[-1.0, -1.0], [1.0, 0.0]]])
    torch.testing.assert_close(got, expected)
    # null-out on row 1 (m = 0): h . v = (2, 6) -> minus (2/5, 6/5) * v; position 0 of row 0 is unmasked but row 0 is not selected
    null = update.apply(hidden, None, torch.tensor([0.0, 0.0]).view(-1, 1, 1), positions, torch.tensor([False, True]))
    expected_null = hidden.clone()
    expected_null[1, 0] = torch.tensor([0.0, 1.0]) - 0.4 * v
    expected_null[1, 1] = torch.tensor([2.0, 2.0]) - 1.2 * v
    torch.testing.assert_close(null, expected_null)
    # negative projections are left alone: h = (-3, 0) . v = -3 < 0
    neg = update.apply(hidden[:1], None, torch.tensor(0.0), None, torch.tensor([True]))
    torch.testing.assert_close(neg[0, 1], torch.tensor([-3.0, 0.0]))
    torch.testing.assert_close(neg[0, 0], torch.tensor([1.0, 1.0]) - 0.6 * v)


def test_delta_formulas_on_hand_tensors():
    x = torch.tensor([[[1.0, 2.0, 3.0]]])
    a, b = torch.tensor([[1.0], [0.0], [2.0]]), torch.tensor([[0.5, -1.0]])
    lora = DynamicWeightUpdate.from_lora(a, b)
    # x @ a = 7; 7 * b = (3.5, -7); times m = -2
    torch.testing.assert_close(lora.delta(x, torch.tensor(-2.0), torch.float32), torch.tensor([[[-7.0, 14.0]]]))
    w = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    local = DynamicWeightUpdate.from_local_weight(w, torch.tensor([10.0, 20.0]))
    # x @ w = (4, 5) + b = (14, 25); times 0.5
    torch.testing.assert_close(local.delta(x, torch.tensor(0.5), torch.float32), torch.tensor([[[7.0, 12.5]]]))
    assert lora.delta_weight().tolist() == [[0.5, -1.0], [0.0, 0.0], [1.0, -2.0]]
    assert local.delta_weight() is local.weight
    assert DynamicWeightUpdate.from_vector(torch.ones(2)).delta_weight() is None


def test_scaled_and_negated_updates_scale_the_delta():
    x = torch.tensor([[[1.0, -1.0]]])
    for update in (
        DynamicWeightUpdate.from_vector(torch.tensor([1.0, 3.0])),
        DynamicWeightUpdate.from_lora(torch.tensor([[1.0], [2.0]]), torch.tensor([[2.0, 1.0]])),
        DynamicWeightUpdate.from_local_weight(torch.tensor([[1.0, 2.0], [0.0, 1.0]]), torch.tensor([0.5, 0.25])),
    ):
        base = update.delta(x, torch.tensor(1.0), torch.float32)
        torch.testing.assert_close((-update).delta(x, torch.tensor(1.0), torch.float32), -base)
        torch.testing.assert_close((update * 3).delta(x, torch.tensor(1.0), torch.float32), 3 * base)
        torch.testing.assert_close((2.5 * update).delta(x, torch.tensor(1.0), torch.float32), 2.5 * base)
        torch.testing.assert_close(update.delta(x, torch.tensor(1.0), torch.float32), base)  # original untouched


def test_zero_multiplier_and_removal_leave_logits_bit_identical(model, ids):
    with torch.no_grad():
        plain = model(ids).logits
    update = DynamicWeightUpdate.from_vector(_rand(32, seed=12))
    assert torch.equal(_logits(model, ids, {LAYER: update}, 0.0), plain)
    handle = attach(model, {LAYER: update}, 4.0)
    with torch.no_grad():
        assert not torch.equal(model(ids).logits, plain)
    handle.remove()
    with torch.no_grad():
        assert torch.equal(model(ids).logits, plain)


def test_multiplier_can_change_between_forwards(model, ids):
    v = _rand(32, seed=13)
    handle = attach(model, {LAYER: DynamicWeightUpdate.from_vector(v)}, 1.0)
    try:
        handle.multiplier = -3.0
        with torch.no_grad():
            got = model(ids).logits
    finally:
        handle.remove()
    torch.testing.assert_close(got, hand_logits(model, ids, {LAYER: lambda x, h: -3.0 * v}), rtol=1e-5, atol=1e-5)


def test_bad_multiplier_shapes_are_refused(model, ids):
    update = DynamicWeightUpdate.from_vector(_rand(32, seed=14))
    with pytest.raises(ValueError, match="2 values but the batch has 3 rows"):
        _logits(model, ids, {LAYER: update}, torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="1-d tensor"):
        attach(model, {LAYER: update}, torch.ones(2, 2))


def test_constructor_errors_name_the_key():
    with pytest.raises(ValueError, match="intervention_method: 'bogus'"):
        DynamicWeightUpdate("bogus", 4)
    with pytest.raises(ValueError, match="intervention_components: 'nowhere'"):
        DynamicWeightUpdate("vector", 4, component="nowhere")
    with pytest.raises(ValueError, match="'lora' needs input_size"):
        DynamicWeightUpdate("lora", 4)
    with pytest.raises(ValueError, match="null-it-out .* not 'lora'"):
        DynamicWeightUpdate.from_lora(torch.ones(3, 1), torch.ones(1, 2)).apply(
            torch.zeros(1, 1, 2), torch.zeros(1, 1, 3), torch.tensor(0.0), None, torch.tensor([True]))


@pytest.mark.parametrize("method", ["vector", "lora", "local_weight"])
def test_bf16_model_fp32_update(method):
    """A bf16 model with an fp32 update: the update stays fp32, m = 0 is bit-identical, the
    output stays bf16 and the steered logits are close to the fp32 model's."""
    model32 = build_tiny_model("llama")
    model16 = build_tiny_model("llama").to(torch.bfloat16)
    ids = torch.randint(3, 97, (2, 6), generator=torch.Generator().manual_seed(9))
    if method == "vector":
        update = DynamicWeightUpdate.from_vector(_rand(32, seed=15))
    elif method == "lora":
        update = DynamicWeightUpdate.from_lora(_rand(48, 2, seed=16), _rand(2, 32, seed=17))
    else:
        update = DynamicWeightUpdate.from_local_weight(_rand(48, 32, seed=18) * 0.3, _rand(32, seed=19))
    with torch.no_grad():
        plain16 = model16(ids).logits
    assert torch.equal(_logits(model16, ids, {LAYER: update}, 0.0), plain16)
    got16 = _logits(model16, ids, {LAYER: update}, 1.5)
    got32 = _logits(model32, ids, {LAYER: update}, 1.5)
    assert got16.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in update.parameters())
    assert (got16.float() - plain16.float()).abs().max() > 0.05  # it steered
    torch.testing.assert_close(got16.float(), got32, rtol=0.05, atol=0.05)
    # the layer output seen by the next layer is bf16 too (apply keeps the hidden dtype)
    hidden = torch.randn(2, 3, 32).to(torch.bfloat16)
    x = torch.randn(2, 3, update.input_size or 1).to(torch.bfloat16) if update.reads_input else None
    positions = torch.tensor([[0.0, 1.0, 1.0], [1.0, 1.0, 0.0]], dtype=torch.bfloat16)
    out = update.apply(hidden, x, torch.tensor([2.0, -1.0]).view(-1, 1, 1), positions)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out[0, 0], hidden[0, 0]) and torch.equal(out[1, 2], hidden[1, 2])
    if method == "vector":
        null = update.apply(hidden, None, torch.tensor(0.0), positions, torch.tensor([True, False]))
        assert null.dtype == torch.bfloat16 and torch.equal(null[1], hidden[1])
