"""Serving without hooks: merged down_proj weights and a peft LoRA adapter equal the hooked update."""
from __future__ import annotations

import pytest
import torch
from peft import PeftModel

from easyedit_split.errors import ModelError
from easyedit_split.export import export_peft_adapter, merged_model
from easyedit_split.interventions import DynamicWeightUpdate, steer

from conftest import build_tiny_model


def _random(model, method, component="mlp_mid", seed=0):
    torch.manual_seed(seed)
    update = DynamicWeightUpdate.for_model(model, method, component=component, rank=3)
    with torch.no_grad():
        for parameter in update.parameters():
            parameter.normal_(0, 0.3)
    return update


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_merged_weights_equal_the_hooked_update(family, token_batch):
    model = build_tiny_model(family)
    updates = {1: _random(model, "local_weight"), 2: _random(model, "lora", seed=1)}
    with torch.no_grad(), steer(model, updates, 1.7):
        expected = model(token_batch).logits
    merged = merged_model(model, updates, 1.7)
    with torch.no_grad():
        torch.testing.assert_close(merged(token_batch).logits, expected, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(model(token_batch).logits, expected)  # the original is untouched


def test_peft_adapter_equals_the_hooked_update(tmp_path, token_batch):
    model = build_tiny_model("llama")
    updates = {0: _random(model, "lora"), 2: _random(model, "lora", seed=2)}
    with torch.no_grad(), steer(model, updates, -1.3):
        expected = model(token_batch).logits
    with torch.no_grad():
        assert not torch.allclose(model(token_batch).logits, expected)  # the update matters
    export_peft_adapter(model, updates, tmp_path / "adapter", multiplier=-1.3)
    served = PeftModel.from_pretrained(build_tiny_model("llama"), tmp_path / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(served(token_batch).logits, expected, rtol=1e-5, atol=1e-5)


def test_what_cannot_be_merged_is_a_clear_error():
    llama = build_tiny_model("llama")
    with pytest.raises(ModelError, match="mlp_mid"):
        merged_model(llama, {1: _random(llama, "local_weight", component="attn")})
    with pytest.raises(ModelError, match="mlp_mid"):
        merged_model(llama, {1: DynamicWeightUpdate.for_model(llama, "vector")})
    gemma = build_tiny_model("gemma2")
    with pytest.raises(ModelError, match="gemma2"):
        merged_model(gemma, {1: _random(gemma, "lora")})
