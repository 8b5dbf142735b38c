"""interventions.py: invariants of the one dynamic-weight-update intervention on tiny models of every
family, and what it promises beyond the formula: shapes, defaults, devices, dropout and the wording
of its errors (each names the key, shape, layer or component at fault).

Every expected value is worked out by hand (shapes from the arguments, kaiming bounds from their
formula), written with the hand-written hook of tests/reference.py, or is an invariant (the result
lives on the device asked for, dropout zeroes or rescales by 1/(1-p)). The formula itself against
hand-written hooks: tests/test_interventions_formula.py.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from conftest import build_tiny_model, seeded_update
from easyedit_split.errors import StorageError
from easyedit_split.interventions import (
    DynamicWeightUpdate, InterventionHandle, _as_multiplier, _first_tensor, attach, check_fits_model, steer,
)
from easyedit_split.models import COMPONENTS
from reference import hand_logits


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def _random_update(model, method, component, seed=0):
    return seeded_update(model, method, component, seed, scale=0.5)


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

    expected = hand_logits(tiny_model, token_batch, {1: lambda x, h: m * vector})
    with steer(tiny_model, {1: DynamicWeightUpdate.from_vector(vector)}, m):
        got = _logits(tiny_model, token_batch)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_local_weight_reads_component_input(tiny_model, token_batch):
    """delta = m * (x @ W + b) with x the down projection's input, checked against a hand-made hook."""
    update = _random_update(tiny_model, "local_weight", "mlp_mid")
    m = 0.7
    down = tiny_model.model.layers[2].mlp.down_proj
    expected = hand_logits(tiny_model, token_batch, {2: lambda x, h: m * (x @ update.weight + update.bias)}, {2: down})
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


META = torch.device("meta")


@pytest.fixture(scope="module")
def model():
    return build_tiny_model("llama")  # hidden 32, intermediate 48, 4 layers


@pytest.fixture(scope="module")
def ids():
    return torch.randint(3, 97, (2, 5), generator=torch.Generator().manual_seed(7))


# ----------------------------------------------------------------------------- construction


def test_constructor_errors_name_the_key_the_value_and_the_choices():
    with pytest.raises(ValueError) as error:
        DynamicWeightUpdate("bogus", 4)
    assert str(error.value) == "intervention_method: 'bogus' is not one of ('vector', 'lora', 'local_weight')"
    with pytest.raises(ValueError) as error:
        DynamicWeightUpdate("vector", 4, component="nowhere")
    assert str(error.value) == "intervention_components: 'nowhere' is not one of ('mlp_mid', 'mlp', 'attn', 'block')"
    for method in ("lora", "local_weight"):
        with pytest.raises(ValueError) as error:
            DynamicWeightUpdate(method, 4, component="attn")
        assert str(error.value) == f"intervention_method '{method}' needs input_size (width of the attn input)"
        with pytest.raises(ValueError, match="needs input_size"):
            DynamicWeightUpdate(method, 4, input_size=0)


def test_a_vector_needs_no_input_size_and_ignores_one():
    update = DynamicWeightUpdate("vector", 4)
    assert (update.method, update.component, update.hidden_size) == ("vector", "mlp_mid", 4)
    assert update.input_size is None and update.rank is None and update.alpha is None
    assert DynamicWeightUpdate("vector", 4, input_size=9, rank=3, alpha=2.0).input_size is None
    assert [name for name, _ in update.named_parameters()] == ["bias"]
    assert update.bias.shape == (4,) and not update.bias.any()


def test_lora_parameters_shapes_defaults_and_dtype():
    update = DynamicWeightUpdate("lora", 5, input_size=3, alpha=8.0, dtype=torch.float64)
    assert (update.method, update.component, update.hidden_size, update.input_size) == ("lora", "mlp_mid", 5, 3)
    assert update.rank == 1 and update.alpha == 8.0  # rank defaults to 1
    assert update.lora_A.shape == (3, 1) and update.lora_B.shape == (1, 5)
    assert update.lora_A.dtype == update.lora_B.dtype == torch.float64
    assert update.bias is None
    assert sorted(name for name, _ in update.named_parameters()) == ["lora_A", "lora_B"]
    assert not update.lora_B.any() and update.lora_A.abs().sum() > 0  # A random, B zero: dW = 0
    ranked = DynamicWeightUpdate("lora", 5, input_size=3, rank=4)
    assert ranked.rank == 4 and ranked.lora_A.shape == (3, 4) and ranked.lora_B.shape == (4, 5)


def test_lora_a_is_kaiming_uniform_with_a_sqrt5():
    """kaiming_uniform_(a=sqrt 5) on [in, r]: fan_in = r, bound = sqrt(2 / (1 + 5)) * sqrt(3 / r) = 1 / sqrt(r)."""
    for rank in (1, 4):
        torch.manual_seed(0)
        a = DynamicWeightUpdate("lora", 2, input_size=4000, rank=rank).lora_A
        bound = 1 / math.sqrt(rank)
        assert a.abs().max() <= bound
        assert a.abs().max() > 0.97 * bound  # 4000 * rank uniform draws reach the bound
        assert abs(a.mean().item()) < 0.05 * bound


def test_local_weight_parameters_shapes_and_dtype():
    update = DynamicWeightUpdate("local_weight", 5, input_size=3, rank=7, alpha=2.0, dtype=torch.float64)
    assert (update.method, update.input_size, update.hidden_size) == ("local_weight", 3, 5)
    assert update.rank is None and update.alpha is None  # rank and alpha belong to lora
    assert update.weight.shape == (3, 5) and update.bias.shape == (5,)
    assert update.weight.dtype == update.bias.dtype == torch.float64
    assert not update.weight.any() and not update.bias.any()
    assert sorted(name for name, _ in update.named_parameters()) == ["bias", "weight"]
    assert not hasattr(DynamicWeightUpdate("vector", 5), "weight")


def test_dropout_module_only_when_positive():
    assert isinstance(DynamicWeightUpdate("vector", 4).dropout, nn.Identity)
    assert isinstance(DynamicWeightUpdate("vector", 4, dropout=0.0).dropout, nn.Identity)
    half = DynamicWeightUpdate("vector", 4, dropout=0.5).dropout
    assert isinstance(half, nn.Dropout) and half.p == 0.5


def test_dropout_acts_on_the_delta_in_training_mode_only():
    """Train mode: each delta entry is 0 or (1 / (1 - p)) * m * v; eval mode: exactly m * v."""
    update = DynamicWeightUpdate.from_vector(torch.full((400,), 2.0), dropout=0.5)
    m = torch.tensor(1.5)
    update.eval()
    assert torch.equal(update.delta(None, m, torch.float32), torch.full((400,), 3.0))
    update.train()
    torch.manual_seed(0)
    dropped = update.delta(None, m, torch.float32)
    assert set(dropped.unique().tolist()) == {0.0, 6.0}
    assert 100 < int((dropped == 0).sum()) < 300


def test_extra_repr_names_method_component_and_shapes():
    assert DynamicWeightUpdate("vector", 4, component="block").extra_repr() == "method=vector, component=block, v[4]"
    assert DynamicWeightUpdate("lora", 4, input_size=6, rank=2).extra_repr() == (
        "method=lora, component=mlp_mid, A[6,2]@B[2,4]")
    assert DynamicWeightUpdate("local_weight", 4, input_size=6, component="attn").extra_repr() == (
        "method=local_weight, component=attn, W[6,4]+b[4]")


# ----------------------------------------------------------------------------- constructors from tensors


def test_from_vector_defaults_to_block_keeps_dtype_values_and_options():
    v = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)
    update = DynamicWeightUpdate.from_vector(v)
    assert (update.method, update.component, update.hidden_size) == ("vector", "block", 3)
    assert update.bias.dtype == torch.float64 and update.bias.tolist() == [1.0, -2.0, 3.0]
    row = DynamicWeightUpdate.from_vector(v.unsqueeze(0), component="attn", dropout=0.25)  # [1, hidden] accepted
    assert row.component == "attn" and row.bias.tolist() == [1.0, -2.0, 3.0]
    assert isinstance(row.dropout, nn.Dropout) and row.dropout.p == 0.25


@pytest.mark.parametrize("shape", [(2, 3), (3, 1, 1), ()])
def test_from_vector_rejects_other_shapes_naming_the_shape(shape):
    with pytest.raises(StorageError) as error:
        DynamicWeightUpdate.from_vector(torch.zeros(shape))
    assert str(error.value) == f"vector must be a 1-d [hidden] tensor, got shape {shape}"


def test_from_lora_sizes_from_the_pair():
    a = torch.arange(6, dtype=torch.float64).view(3, 2)
    b = torch.arange(10, dtype=torch.float64).view(2, 5)
    update = DynamicWeightUpdate.from_lora(a, b, alpha=4.0)
    assert (update.component, update.input_size, update.rank, update.hidden_size, update.alpha) == ("mlp_mid", 3, 2, 5, 4.0)
    assert torch.equal(update.lora_A, a) and torch.equal(update.lora_B, b) and update.lora_A.dtype == torch.float64
    assert DynamicWeightUpdate.from_lora(a, b, component="attn").component == "attn"


@pytest.mark.parametrize("a_shape, b_shape", [((3, 2, 1), (2, 5)), ((3, 2), (2, 5, 1)), ((3, 2), (3, 5)), ((6,), (2, 5))])
def test_from_lora_rejects_pairs_that_do_not_multiply(a_shape, b_shape):
    with pytest.raises(StorageError) as error:
        DynamicWeightUpdate.from_lora(torch.zeros(a_shape), torch.zeros(b_shape))
    assert str(error.value) == (
        f"lora_A {a_shape} and lora_B {b_shape} do not form A @ B ([in, r] @ [r, hidden])")


def test_from_local_weight_sizes_bias_and_errors():
    w = torch.arange(6, dtype=torch.float64).view(3, 2)
    update = DynamicWeightUpdate.from_local_weight(w)
    assert (update.method, update.component, update.input_size, update.hidden_size) == ("local_weight", "mlp_mid", 3, 2)
    assert torch.equal(update.weight, w) and update.weight.dtype == torch.float64
    assert update.bias.tolist() == [0.0, 0.0]  # no bias: db = 0
    with_bias = DynamicWeightUpdate.from_local_weight(w, torch.tensor([[5.0, 6.0]]), component="mlp", dropout=0.5)
    assert with_bias.bias.tolist() == [5.0, 6.0] and with_bias.component == "mlp" and with_bias.dropout.p == 0.5
    with pytest.raises(StorageError) as error:
        DynamicWeightUpdate.from_local_weight(torch.zeros(4))
    assert str(error.value) == "local_weight 'weight' must be [in, hidden], got shape (4,)"
    with pytest.raises(StorageError) as error:
        DynamicWeightUpdate.from_local_weight(w, torch.zeros(2, 2))
    assert str(error.value) == "bias must be a 1-d [hidden] tensor, got shape (2, 2)"


def test_for_model_sizes_from_the_model(model):
    """The tiny llama: hidden 32, the down projection reads the 48-wide intermediate."""
    lora = DynamicWeightUpdate.for_model(model, "lora")
    assert (lora.component, lora.rank, lora.input_size, lora.hidden_size) == ("mlp_mid", 1, 48, 32)
    assert lora.lora_A.shape == (48, 1) and not lora.lora_B.any()
    attn = DynamicWeightUpdate.for_model(model, "local_weight", component="attn", rank=3, dropout=0.5)
    assert (attn.component, attn.input_size, attn.hidden_size, attn.weight.shape) == ("attn", 32, 32, (32, 32))
    assert attn.dropout.p == 0.5
    ranked = DynamicWeightUpdate.for_model(model, "lora", component="mlp", rank=3)
    assert ranked.lora_A.shape == (32, 3) and ranked.rank == 3
    vector = DynamicWeightUpdate.for_model(model, "vector", component="block")
    assert vector.input_size is None and vector.hidden_size == 32 and vector.component == "block"


# ----------------------------------------------------------------------------- delta: devices, dtypes, errors


def test_delta_lives_on_the_requested_device():
    """`device` wins; else x's device; else the parameters'. (`meta` stands in for a second GPU.)"""
    x = torch.ones(1, 1, 3)
    m = torch.tensor(2.0)
    updates = [
        DynamicWeightUpdate.from_vector(torch.ones(2)),
        DynamicWeightUpdate.from_lora(torch.ones(3, 1), torch.ones(1, 2)),
        DynamicWeightUpdate.from_local_weight(torch.ones(3, 2), torch.ones(2)),
    ]
    for update in updates:
        assert update.delta(x, m, torch.float32, META).device == META
        assert update.delta(x, m, torch.float32).device.type == "cpu"
    for update in updates[1:]:
        assert update.delta(x.to(META), m, torch.float32).device == META  # x's device when none is given
    assert updates[0].delta(None, m, torch.float32).tolist() == [2.0, 2.0]  # vector: no x needed
    out = updates[2].delta(x, m, torch.float16)
    assert out.dtype == torch.float16 and out.tolist() == [[[8.0, 8.0]]]  # 2 * (3 + 1)


def test_apply_follows_the_hidden_states_device():
    for update in (DynamicWeightUpdate.from_vector(torch.ones(2)),
                   DynamicWeightUpdate.from_local_weight(torch.ones(3, 2), torch.ones(2))):
        x = torch.ones(1, 2, 3, device=META) if update.reads_input else None
        hidden = torch.zeros(1, 2, 2, device=META)
        assert update.apply(hidden, x, torch.tensor(1.0), torch.ones(1, 2)).device == META
    vector = DynamicWeightUpdate.from_vector(torch.ones(2))
    out = vector.apply(torch.zeros(1, 2, 2, device=META), None, torch.tensor(0.0), torch.ones(1, 2), torch.tensor([True]))
    assert out.device == META


@pytest.mark.parametrize("method", ["lora", "local_weight"])
def test_missing_component_input_names_method_and_component(method):
    update = DynamicWeightUpdate(method, 2, input_size=3, component="attn")
    with pytest.raises(RuntimeError) as error:
        update.delta(None, torch.tensor(1.0), torch.float32)
    assert str(error.value) == f"{method} update at attn: the component input was not captured"


def test_null_it_out_needs_a_vector_and_says_which_method():
    update = DynamicWeightUpdate.from_local_weight(torch.ones(3, 2))
    with pytest.raises(ValueError) as error:
        update.apply(torch.zeros(1, 1, 2), torch.zeros(1, 1, 3), torch.tensor(0.0), None, torch.tensor([True]))
    assert str(error.value) == "null-it-out projects a direction out: it needs a vector update, not 'local_weight'"


def test_null_it_out_of_a_zero_vector_changes_nothing():
    """|v|^2 = 0 is clamped: relu(h . 0) / eps * 0 = 0, never nan."""
    hidden = torch.tensor([[[1.0, -2.0], [3.0, 4.0]]])
    out = DynamicWeightUpdate.from_vector(torch.zeros(2)).apply(hidden, None, torch.tensor(0.0), None, torch.tensor([True]))
    assert torch.equal(out, hidden)


def test_null_it_out_of_a_tiny_vector_still_projects():
    """v = (1e-3, 0): |v|^2 = 1e-6 is far above the clamp, so h loses its whole positive first coordinate."""
    hidden = torch.tensor([[[2.0, 5.0], [-1.0, 5.0]]], dtype=torch.float64)
    update = DynamicWeightUpdate.from_vector(torch.tensor([1e-3, 0.0], dtype=torch.float64))
    out = update.apply(hidden, None, torch.tensor(0.0), None, torch.tensor([True]))
    torch.testing.assert_close(out, torch.tensor([[[0.0, 5.0], [-1.0, 5.0]]], dtype=torch.float64))


def test_null_it_out_dropout_draws_on_v():
    """Train mode: the projected direction is dropped too, entry by entry (0 or 2 v with p = 0.5)."""
    v = torch.ones(200)
    update = DynamicWeightUpdate.from_vector(v, dropout=0.5).train()
    hidden = torch.ones(1, 1, 200)  # h . v = 200, |v|^2 = 200: coefficient 1
    torch.manual_seed(0)
    out = update.apply(hidden, None, torch.tensor(0.0), None, torch.tensor([True]))
    assert set(out.unique().tolist()) == {1.0, -1.0}  # 1 - 1 * 0 or 1 - 1 * 2


# ----------------------------------------------------------------------------- checks and helpers


def test_check_fits_model_names_the_source_and_both_widths(model):
    with pytest.raises(StorageError) as error:
        check_fits_model(DynamicWeightUpdate.from_vector(torch.zeros(7)), model, 1, source="concept.pt")
    assert str(error.value) == "concept.pt: output width 7 does not match the model's hidden size 32"
    with pytest.raises(StorageError) as error:
        check_fits_model(DynamicWeightUpdate("lora", 32, input_size=40), model, 1)
    assert str(error.value) == (
        "intervention: input width 40 does not match the model's 'mlp_mid' input width 48")
    check_fits_model(DynamicWeightUpdate("lora", 32, input_size=48), model, 3)  # fits: no error
    check_fits_model(DynamicWeightUpdate("local_weight", 32, input_size=32, component="attn"), model, 0)


def test_attach_reports_the_layer_of_a_misfit(model):
    with pytest.raises(StorageError, match=r"^layer 2: input width 40 does not match the model's 'mlp_mid'"):
        attach(model, {0: DynamicWeightUpdate.for_model(model, "vector"), 2: DynamicWeightUpdate("lora", 32, input_size=40)})
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())  # the layer-0 hook is gone too


def test_first_tensor_finds_positional_or_keyword_input():
    t, u = torch.zeros(1), torch.ones(1)
    assert _first_tensor((t,), {"hidden_states": u}) is t
    assert _first_tensor((), {"hidden_states": t, "x": u}) is t
    assert _first_tensor(("not a tensor",), {"x": t, "input": u}) is t
    assert _first_tensor((), {"input": t}) is t
    assert _first_tensor((), {"hidden_states": None, "input": t}) is t
    with pytest.raises(RuntimeError) as error:
        _first_tensor((), {"other": t})
    assert str(error.value) == "could not find the input tensor of the hooked module"


def test_multiplier_is_float32_and_finite():
    assert _as_multiplier(2).dtype == torch.float32 and _as_multiplier(2).item() == 2.0
    assert _as_multiplier([1, -2]).tolist() == [1.0, -2.0]
    with pytest.raises(ValueError) as error:
        _as_multiplier(torch.ones(2, 3))
    assert str(error.value) == "multiplier must be a float or a 1-d tensor (one per batch row), got shape (2, 3)"
    for bad in (float("nan"), [1.0, float("inf")]):
        with pytest.raises(ValueError, match="multiplier must be finite, got"):
            _as_multiplier(bad)
    with pytest.raises(ValueError) as error:
        _as_multiplier([1.0, float("-inf")])
    assert str(error.value) == "multiplier must be finite, got [1.0, -inf]"


# ----------------------------------------------------------------------------- hooks


def test_capture_reads_a_keyword_input_by_hand(model):
    """A local-weight update on `attn` reads the attention's input, which Llama passes as a keyword."""
    w = torch.eye(32) * 0.5
    update = DynamicWeightUpdate.from_local_weight(w, torch.zeros(32), component="attn")
    ids = torch.tensor([[5, 6, 7]])
    expected = hand_logits(model, ids, {1: lambda x, h: 2.0 * x * 0.5}, {1: model.model.layers[1].self_attn})
    with torch.no_grad(), steer(model, {1: update}, 2.0):
        got = model(ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def _layer_hook(model, layer):
    """The hook an attached handle put last on decoder layer `layer`, to call on hand-made outputs."""
    return list(model.model.layers[layer]._forward_hooks.values())[-1]


def test_layer_hook_keeps_the_output_form(model):
    """A layer returning a bare tensor gets a bare tensor back; a tuple keeps its other items."""
    v = torch.zeros(32)
    v[:2] = torch.tensor([1.0, -1.0])
    layer = model.model.layers[1]
    handle = attach(model, {1: DynamicWeightUpdate.from_vector(v)}, 2.0)
    try:
        hook = _layer_hook(model, 1)
        hidden = torch.ones(1, 1, 32)
        bare = hook(layer, (), {}, hidden)
        pair = hook(layer, (), {}, (hidden, "extra", 5))
    finally:
        handle.remove()
    expected = torch.ones(1, 1, 32)
    expected[0, 0, :2] = torch.tensor([3.0, -1.0])
    assert isinstance(bare, torch.Tensor) and torch.equal(bare, expected)
    assert isinstance(pair, tuple) and torch.equal(pair[0], expected) and pair[1:] == ("extra", 5)


def test_zero_multiplier_returns_the_layer_output_object_itself(model):
    """m = 0 (no null-it-out) hands back the very output object: nothing recomputed, bit-identical."""
    handle = attach(model, {1: DynamicWeightUpdate.from_vector(torch.ones(32))}, torch.tensor(0.0))
    try:
        output = (torch.ones(2, 5, 32),)
        assert _layer_hook(model, 1)(model.model.layers[1], (), {}, output) is output
    finally:
        handle.remove()


def test_zero_multiplier_with_null_out_still_projects(model, ids):
    """m = 0 with null-it-out rows is not a no-op: the rows lose their positive component along v."""
    v = torch.zeros(32)
    v[0] = 1.0
    handle = InterventionHandle(model, {1: DynamicWeightUpdate.from_vector(v)}, 0.0, null_out=torch.tensor([True, False]))
    try:
        hook = _layer_hook(model, 1)
        hidden = torch.zeros(2, 5, 32)
        hidden[:, :, 0] = 3.0
        hidden[:, :, 1] = 1.0
        out = hook(model.model.layers[1], (), {}, (hidden,))[0]
    finally:
        handle.remove()
    assert out[0, :, 0].abs().max() == 0 and out[0, :, 1].eq(1.0).all()  # row 0 projected
    assert torch.equal(out[1], hidden[1])  # row 1 left alone (m = 0)


def test_per_row_multiplier_of_the_wrong_length_names_both_counts(model, ids):
    update = DynamicWeightUpdate.from_vector(torch.ones(32))
    with pytest.raises(ValueError) as error:
        with torch.no_grad(), steer(model, {1: update}, torch.tensor([1.0, 2.0, 3.0])):
            model(ids)
    assert str(error.value) == "multiplier has 3 values but the batch has 2 rows"


def test_positions_apply_only_when_they_match_batch_and_length(model):
    """A [2, 5] mask steers a [2, 5] forward where it is 1; a [2, 4] mask is ignored (steers everywhere)."""
    update = DynamicWeightUpdate.from_vector(torch.ones(32))
    layer = model.model.layers[1]
    positions = torch.tensor([[0.0, 1.0, 1.0, 0.0, 1.0], [1.0, 0.0, 0.0, 0.0, 0.0]])
    for mask, expected in ((positions, positions), (torch.ones(2, 4), torch.ones(2, 5)),
                           (torch.ones(5, 2), torch.ones(2, 5))):
        handle = attach(model, {1: update}, 2.0, positions=mask)
        try:
            hook = _layer_hook(model, 1)
            out = hook(layer, (), {}, (torch.zeros(2, 5, 32),))[0]
        finally:
            handle.remove()
        assert torch.equal(out, 2.0 * expected.unsqueeze(-1).expand(2, 5, 32))


def test_steer_and_attach_pass_multiplier_and_positions(model):
    update = DynamicWeightUpdate.from_vector(torch.ones(32))
    positions = torch.tensor([[1.0, 0.0, 1.0]])
    with steer(model, {2: update}, -1.5, positions) as handle:
        assert handle.multiplier.item() == -1.5 and handle.positions is positions and handle.null_out is None
        assert handle.updates == {2: update} and handle.model is model
    handle = attach(model, {2: update}, 0.25, positions)
    try:
        assert handle.multiplier.item() == 0.25 and handle.positions is positions
    finally:
        handle.remove()
    handle = attach(model, {2: update})
    try:
        assert handle.multiplier.item() == 1.0 and handle.positions is None  # defaults: m = 1, everywhere
    finally:
        handle.remove()
    with steer(model, {2: update}) as handle:
        assert handle.multiplier.item() == 1.0 and handle.positions is None


def test_captured_input_is_consumed_and_cleared_on_removal(model, ids):
    update = DynamicWeightUpdate.for_model(model, "local_weight", component="mlp_mid")
    handle = attach(model, {1: update}, 1.0)
    try:
        with torch.no_grad():
            model(ids)
        assert handle._inputs == {}  # popped by the layer hook, never reused by a later forward
        handle._inputs[1] = torch.zeros(1)
    finally:
        handle.remove()
    assert handle._inputs == {} and handle._hooks == []


def test_multiplier_one_is_applied(model):
    """The default multiplier 1 adds v itself (only 0 short-circuits)."""
    v = torch.arange(32, dtype=torch.float32) / 32
    for handle in (attach(model, {1: DynamicWeightUpdate.from_vector(v)}),
                   InterventionHandle(model, {1: DynamicWeightUpdate.from_vector(v)})):
        try:
            assert handle.multiplier.item() == 1.0
            out = _layer_hook(model, 1)(model.model.layers[1], (), {}, (torch.ones(2, 3, 32),))[0]
        finally:
            handle.remove()
        assert torch.equal(out, torch.ones(2, 3, 32) + v)


def test_layer_hook_without_a_captured_input_says_so(model):
    """If the component's input never arrived (its module was skipped), the error names method and component."""
    handle = attach(model, {1: DynamicWeightUpdate.for_model(model, "lora", component="mlp_mid")}, 1.0)
    try:
        with pytest.raises(RuntimeError) as error:
            _layer_hook(model, 1)(model.model.layers[1], (), {}, (torch.ones(1, 2, 32),))
    finally:
        handle.remove()
    assert str(error.value) == "lora update at mlp_mid: the component input was not captured"


def test_a_fp32_positions_mask_keeps_bf16_hidden_states_bf16():
    hidden = torch.ones(1, 2, 2, dtype=torch.bfloat16)
    update = DynamicWeightUpdate.from_vector(torch.tensor([1.0, 2.0]))
    out = update.apply(hidden, None, torch.tensor(1.0), torch.tensor([[1.0, 0.0]]))
    assert out.dtype == torch.bfloat16 and out.tolist() == [[[2.0, 3.0], [1.0, 1.0]]]


def test_a_one_wide_vector_is_a_vector():
    update = DynamicWeightUpdate.from_vector(torch.tensor([5.0]))
    assert update.hidden_size == 1 and update.bias.tolist() == [5.0]


def test_a_per_row_multiplier_follows_the_update_to_its_device():
    """A [rows, 1, 1] multiplier left on the CPU is moved to where the delta is computed."""
    update = DynamicWeightUpdate.from_local_weight(torch.ones(3, 2), torch.ones(2))
    m = torch.tensor([2.0, -1.0]).view(-1, 1, 1)
    out = update.delta(torch.ones(2, 1, 3), m, torch.float32, META)
    assert out.device == META and out.shape == (2, 1, 2)
