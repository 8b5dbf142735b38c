"""SteeringInterventions: arithmetic equals the sum of deltas, save/load round trip, apply restores the model."""
from __future__ import annotations

import pytest
import torch

from easyedit_split.interventions import DynamicWeightUpdate, steer
from easyedit_split.steering import SteeringInterventions, add_updates

HIDDEN, IN = 16, 64


def _randn(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _delta(update, x):
    return update.delta(x, torch.tensor(1.0), torch.float32).expand(x.shape[0], HIDDEN)  # a vector ignores x


@pytest.mark.parametrize("kinds", [("vector", "vector"), ("lora", "lora"), ("lora", "local_weight"), ("vector", "lora")])
def test_sum_of_two_updates_adds_their_deltas(kinds):
    makers = {
        "vector": lambda s: DynamicWeightUpdate.from_vector(_randn(HIDDEN, seed=s), component="mlp_mid"),
        "lora": lambda s: DynamicWeightUpdate.from_lora(_randn(IN, 2, seed=s), _randn(2, HIDDEN, seed=s + 1)),
        "local_weight": lambda s: DynamicWeightUpdate.from_local_weight(_randn(IN, HIDDEN, seed=s), _randn(HIDDEN, seed=s + 2)),
    }
    a, b = makers[kinds[0]](1), makers[kinds[1]](5)
    x = _randn(3, IN, seed=9)
    total = add_updates(a, b)
    # independent expectation: the two formulas written out by hand
    expected = torch.zeros(3, HIDDEN)
    for update in (a, b):
        if update.method == "vector":
            expected += update.bias
        elif update.method == "lora":
            expected += x @ update.lora_A @ update.lora_B
        else:
            expected += x @ update.weight + update.bias
    torch.testing.assert_close(_delta(total, x), expected.detach(), rtol=1e-5, atol=1e-5)


def test_arithmetic_on_the_container():
    v1, v2 = _randn(HIDDEN, seed=1), _randn(HIDDEN, seed=2)
    a = SteeringInterventions({1: DynamicWeightUpdate.from_vector(v1)})
    b = SteeringInterventions({1: DynamicWeightUpdate.from_vector(v2), 3: DynamicWeightUpdate.from_vector(v1)})
    torch.testing.assert_close((a + b)[1].bias.detach(), v1 + v2)
    torch.testing.assert_close((a - b)[1].bias.detach(), v1 - v2)
    torch.testing.assert_close((a - b)[3].bias.detach(), -v1)
    torch.testing.assert_close((2.0 * a)[1].bias.detach(), 2 * v1)
    torch.testing.assert_close((-a)[1].bias.detach(), -v1)
    assert sorted(a + b) == [1, 3]
    torch.testing.assert_close(a[1].bias.detach(), v1)  # operands unchanged


def test_multi_concept_result_and_save_load_round_trip(tmp_path):
    trained = {2: {0: DynamicWeightUpdate.from_vector(_randn(HIDDEN, seed=1)),
                   1: DynamicWeightUpdate.from_vector(_randn(HIDDEN, seed=2))}}
    interventions = SteeringInterventions.from_trained(trained)
    assert interventions.concept_id == 0 and sorted(interventions.concepts) == [0, 1]
    assert interventions[2] is trained[2][0]
    interventions.save(tmp_path)
    for concept_id in (0, 1):
        loaded = SteeringInterventions.load(tmp_path, concept_id=concept_id)
        assert torch.equal(loaded[2].bias.detach(), trained[2][concept_id].bias.detach())
    assert interventions.for_concept(1)[2] is trained[2][1]
    with pytest.raises(KeyError, match="concept 5"):
        interventions.for_concept(5)


def test_apply_is_the_same_as_steer_and_removal_restores_the_model(tiny_chat_model):
    interventions = SteeringInterventions({1: DynamicWeightUpdate.from_vector(_randn(tiny_chat_model.config.hidden_size, seed=4))})
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        plain = tiny_chat_model(ids).logits
        with interventions.apply(tiny_chat_model, 2.0):
            applied = tiny_chat_model(ids).logits
        with steer(tiny_chat_model, interventions, 2.0):  # a container is accepted wherever a dict is
            steered = tiny_chat_model(ids).logits
        after = tiny_chat_model(ids).logits
    assert torch.equal(applied, steered) and not torch.equal(applied, plain)
    assert torch.equal(after, plain)


def test_non_updates_are_rejected():
    with pytest.raises(TypeError, match="layer 3"):
        SteeringInterventions({3: torch.zeros(4)})
