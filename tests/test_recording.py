"""The one activation recorder against transformers' own `output_hidden_states=True`."""
from __future__ import annotations

import pytest
import torch

from conftest import build_tiny_model
from easyedit_split.errors import ModelError
from easyedit_split.interventions import DynamicWeightUpdate, attach
from easyedit_split.fastpath.recording import record_activations


def _hook_count(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _ids():
    return torch.randint(3, 97, (2, 7), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma2"])
def test_outputs_and_inputs_equal_hidden_states(family):
    """hidden_states[l] is what layer l receives, hidden_states[l + 1] what it returns (last layer: before the norm)."""
    model = build_tiny_model(family, num_layers=4)
    ids = _ids()
    with torch.no_grad():
        reference = model(ids, output_hidden_states=True).hidden_states
        hooks_before = _hook_count(model)  # after transformers has added its own recording hooks
        with record_activations(model, [0, 2], inputs=True) as record:
            model(ids)
    assert sorted(record.outputs) == sorted(record.inputs) == [0, 2]
    for layer in (0, 2):
        assert torch.equal(record.inputs[layer], reference[layer])
        assert torch.equal(record.outputs[layer], reference[layer + 1])
    assert "attention_mask" in record.kwargs[2] and "position_embeddings" in record.kwargs[2]
    assert _hook_count(model) == hooks_before


def test_stop_after_ends_the_forward_cleanly():
    model = build_tiny_model("llama", num_layers=4)
    reached = []
    model.model.layers[2].register_forward_pre_hook(lambda module, args: reached.append(2))
    with torch.no_grad():
        reference = model(_ids(), output_hidden_states=True).hidden_states
        reached.clear()
        with record_activations(model, [1], stop_after=1) as record:
            model(_ids())
            reached.append("after the forward")  # skipped: the forward ended inside the block
    assert reached == []
    assert torch.equal(record.outputs[1], reference[2])
    with torch.no_grad(), record_activations(model, [1]) as again:  # hooks are gone, the model runs whole
        model(_ids())
    assert reached == [2] and sorted(again.outputs) == [1]


def test_records_steered_outputs_and_checks_layers():
    model = build_tiny_model("llama", num_layers=4)
    vector = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        plain = model(_ids(), output_hidden_states=True).hidden_states
        with attach(model, {1: DynamicWeightUpdate.from_vector(vector)}, 2.0), record_activations(model, [1]) as record:
            model(_ids())
    assert torch.equal(record.outputs[1], plain[2] + 2.0 * vector)
    with pytest.raises(ModelError, match="layer 9"):
        with record_activations(model, [9]):
            pass
