"""Invariants of the one dynamic-weight-update intervention, on tiny models of every family."""
from __future__ import annotations

import pytest
import torch

from easyedit_split.interventions import DynamicWeightUpdate, attach, steer
from easyedit_split.models import COMPONENTS, get_layer
from easyedit_split.errors import StorageError


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def _random_update(model, method, component, seed=0):
    torch.manual_seed(seed)
    update = DynamicWeightUpdate.for_model(model, method, component=component, rank=2)
    with torch.no_grad():
        for parameter in update.parameters():
            parameter.normal_(0, 0.5)
    return update


@pytest.mark.parametrize("method", ["vector", "lora", "local_weight"])
@pytest.mark.parametrize("component", COMPONENTS)
def test_multiplier_zero_is_bit_identical(tiny_model, token_batch, method, component):
    baseline = _logits(tiny_model, token_batch)
    update = _random_update(tiny_model, method, component)
    with steer(tiny_model, {1: update}, 0.0):
        steered = _logits(tiny_model, token_batch)
    with steer(tiny_model, {1: update}, torch.zeros(token_batch.shape[0])):
        steered_rows = _logits(tiny_model, token_batch)
    assert torch.equal(baseline, steered)
    assert torch.equal(baseline, steered_rows)


@pytest.mark.parametrize("method", ["vector", "lora", "local_weight"])
def test_removal_restores_exactly(tiny_model, token_batch, method):
    state_before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    baseline = _logits(tiny_model, token_batch)
    handle = attach(tiny_model, {2: _random_update(tiny_model, method, "mlp_mid")}, 3.0)
    assert not torch.allclose(_logits(tiny_model, token_batch), baseline)
    handle.remove()
    assert torch.equal(_logits(tiny_model, token_batch), baseline)
    assert all(torch.equal(v, state_before[k]) for k, v in tiny_model.state_dict().items())
    assert not any(layer._forward_hooks or layer._forward_pre_hooks for layer in tiny_model.modules())


def test_context_manager_restores_on_error(tiny_model, token_batch):
    baseline = _logits(tiny_model, token_batch)
    with pytest.raises(RuntimeError):
        with steer(tiny_model, {0: _random_update(tiny_model, "vector", "block")}, 5.0):
            raise RuntimeError("boom")
    assert torch.equal(_logits(tiny_model, token_batch), baseline)


@pytest.mark.parametrize("method", ["vector", "lora", "local_weight"])
def test_per_row_multipliers_equal_separate_runs(tiny_model, method):
    update = _random_update(tiny_model, method, "mlp")
    ids = torch.randint(3, 97, (1, 7), generator=torch.Generator().manual_seed(3))
    multipliers = torch.tensor([-2.0, 0.0, 0.5, 4.0])
    with steer(tiny_model, {1: update}, multipliers):
        batched = _logits(tiny_model, ids.expand(4, -1))
    for row, m in enumerate(multipliers.tolist()):
        with steer(tiny_model, {1: update}, m):
            single = _logits(tiny_model, ids)
        torch.testing.assert_close(batched[row : row + 1], single, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("component", COMPONENTS)
def test_lora_equals_local_weight_with_product(tiny_model, token_batch, component):
    lora = _random_update(tiny_model, "lora", component)
    product = (lora.lora_A @ lora.lora_B).detach()
    local = DynamicWeightUpdate.from_local_weight(product, torch.zeros(product.shape[1]), component=component)
    with steer(tiny_model, {2: lora}, 1.5):
        via_lora = _logits(tiny_model, token_batch)
    with steer(tiny_model, {2: local}, 1.5):
        via_local = _logits(tiny_model, token_batch)
    torch.testing.assert_close(via_lora, via_local, rtol=1e-5, atol=1e-5)


def test_vector_equals_adding_to_hidden_state_by_hand(tiny_model, token_batch):
    vector = torch.randn(tiny_model.config.hidden_size, generator=torch.Generator().manual_seed(5))
    m = 2.5

    def add_by_hand(module, args, kwargs, output):
        hidden = output[0] if isinstance(output, tuple) else output
        hidden = hidden + m * vector
        return (hidden,) + tuple(output[1:]) if isinstance(output, tuple) else hidden

    hook = get_layer(tiny_model, 1).register_forward_hook(add_by_hand, with_kwargs=True)
    expected = _logits(tiny_model, token_batch)
    hook.remove()
    with steer(tiny_model, {1: DynamicWeightUpdate.from_vector(vector)}, m):
        got = _logits(tiny_model, token_batch)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_local_weight_reads_component_input(tiny_model, token_batch):
    """delta = m * (x @ W + b) with x the down projection's input, checked against a hand-made hook."""
    update = _random_update(tiny_model, "local_weight", "mlp_mid")
    m = 0.7
    captured = {}
    layer = get_layer(tiny_model, 2)
    pre = layer.mlp.down_proj.register_forward_pre_hook(lambda mod, args: captured.__setitem__("x", args[0]))

    def add(module, args, kwargs, output):
        hidden = output[0] if isinstance(output, tuple) else output
        hidden = hidden + m * (captured["x"] @ update.weight + update.bias)
        return (hidden,) + tuple(output[1:]) if isinstance(output, tuple) else hidden

    post = layer.register_forward_hook(add, with_kwargs=True)
    expected = _logits(tiny_model, token_batch)
    pre.remove(), post.remove()
    with steer(tiny_model, {2: update}, m):
        got = _logits(tiny_model, token_batch)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


def test_wrong_shape_is_a_clear_error(tiny_model):
    with pytest.raises(StorageError, match="hidden size"):
        attach(tiny_model, {0: DynamicWeightUpdate.from_vector(torch.zeros(7))})
    assert not any(m._forward_hooks for m in tiny_model.modules())


def test_layer_out_of_range_names_the_layer(tiny_model):
    from easyedit_split.errors import ModelError

    with pytest.raises(ModelError, match="layer 99"):
        attach(tiny_model, {99: DynamicWeightUpdate.for_model(tiny_model, "vector")})


def test_negation_flips_the_delta(tiny_model, token_batch):
    update = _random_update(tiny_model, "local_weight", "attn")
    with steer(tiny_model, {1: update}, -2.0):
        expected = _logits(tiny_model, token_batch)
    with steer(tiny_model, {1: -update}, 2.0):
        got = _logits(tiny_model, token_batch)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


def test_null_it_out_operator_matches_hand_values():
    """Row 0 adds m*v; row 1 (null-it-out) loses its positive component along v, only at steered positions."""
    update = DynamicWeightUpdate.from_vector(torch.tensor([0.0, 2.0]))
    hidden = torch.tensor([[[1.0, 3.0], [1.0, -3.0]], [[1.0, 3.0], [1.0, -3.0]]])  # [2 rows, 2 positions, 2]
    positions = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    out = update.apply(hidden, None, torch.tensor([1.5, 0.0]).view(-1, 1, 1), positions, torch.tensor([False, True]))
    # row 0: h + 1.5 * (0, 2); row 1, position 0: h.v = 6, |v|^2 = 4 -> h - 1.5 * (0, 2) = (1, 0);
    # row 1, position 1 is not steered
    expected = torch.tensor([[[1.0, 6.0], [1.0, 0.0]], [[1.0, 0.0], [1.0, -3.0]]])
    assert torch.equal(out, expected)
    negative = update.apply(hidden[1:, 1:], None, torch.zeros(1, 1, 1), None, torch.tensor([True]))
    assert torch.equal(negative, hidden[1:, 1:])  # h.v < 0: relu leaves h unchanged
    with pytest.raises(ValueError, match="vector"):
        lora = DynamicWeightUpdate.from_lora(torch.ones(2, 1), torch.ones(1, 2))
        lora.apply(hidden, hidden, torch.ones(2, 1, 1), None, torch.tensor([False, True]))
