"""The fast path (capture once, replay layers l..N) equals the plain full forward."""
from __future__ import annotations

import pytest
import torch

from easyedit_split.interventions import DynamicWeightUpdate
from easyedit_split.prompts import IGNORE_INDEX, TokenBatch
from easyedit_split.replay import capture_layer_inputs, completion_nll, full_forward_nll


def _batch(lengths=(9, 6, 8), prompt=3, vocab=97, seed=2):
    generator = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, IGNORE_INDEX)
    for row, length in enumerate(lengths):
        ids[row, :length] = torch.randint(3, vocab, (length,), generator=generator)
        mask[row, :length] = 1
        labels[row, prompt:length] = ids[row, prompt:length]
    return TokenBatch(ids, mask, labels)


def _update(model, method, component):
    torch.manual_seed(4)
    update = DynamicWeightUpdate.for_model(model, method, component=component, rank=2)
    with torch.no_grad():
        for p in update.parameters():
            p.normal_(0, 0.3)
    return update


@pytest.mark.parametrize("method,component", [("vector", "block"), ("lora", "mlp_mid"), ("local_weight", "attn")])
def test_fast_path_equals_full_forward(tiny_model, method, component):
    batch = _batch()
    update = _update(tiny_model, method, component)
    multipliers = torch.tensor([1.5, -0.5, 2.0])
    captured = capture_layer_inputs(tiny_model, batch, start_layer=2)
    fast = completion_nll(tiny_model, captured, {2: update}, multipliers)
    plain = full_forward_nll(tiny_model, batch, {2: update}, multipliers)
    torch.testing.assert_close(fast.sum, plain.sum, rtol=1e-5, atol=1e-5)
    assert torch.equal(fast.count, plain.count)
    assert fast.count.tolist() == [6, 3, 5]  # labelled tokens: length - prompt (3)


def test_replayed_rows_form_a_sweep(tiny_model):
    """K copies of each row at K multipliers equal K separate full forwards."""
    batch = _batch()
    update = _update(tiny_model, "lora", "mlp")
    captured = capture_layer_inputs(tiny_model, batch, start_layer=1)
    multipliers = [-1.0, 0.0, 3.0]
    rows = torch.arange(3).repeat(len(multipliers))  # row-major: multiplier k, example b
    per_row_m = torch.tensor(multipliers).repeat_interleave(3)
    fast = completion_nll(tiny_model, captured, {1: update}, per_row_m, rows)
    for k, m in enumerate(multipliers):
        plain = full_forward_nll(tiny_model, batch, {1: update}, m)
        torch.testing.assert_close(fast.sum[3 * k : 3 * k + 3], plain.sum, rtol=1e-5, atol=1e-5)


def test_fast_path_gradients_equal_full_forward(tiny_model):
    batch = _batch()
    grads = []
    for path in ("fast", "plain"):
        update = _update(tiny_model, "local_weight", "mlp_mid")
        if path == "fast":
            loss = completion_nll(tiny_model, capture_layer_inputs(tiny_model, batch, 2), {2: update}, 2.0).mean.sum()
        else:
            loss = full_forward_nll(tiny_model, batch, {2: update}, 2.0).mean.sum()
        loss.backward()
        grads.append((update.weight.grad.clone(), update.bias.grad.clone()))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-5, atol=1e-5)


def test_multiplier_zero_reproduces_unsteered_nll(tiny_model):
    batch = _batch()
    with torch.no_grad():
        logits = tiny_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    log_probs = torch.log_softmax(logits[:, :-1], -1)
    targets = batch.labels[:, 1:]
    mask = targets != IGNORE_INDEX
    expected = -(log_probs.gather(-1, targets.clamp_min(0).unsqueeze(-1)).squeeze(-1) * mask).sum(1)
    captured = capture_layer_inputs(tiny_model, batch, 3)
    got = completion_nll(tiny_model, captured, {3: _update(tiny_model, "vector", "block")}, 0.0)
    torch.testing.assert_close(got.sum, expected, rtol=1e-5, atol=1e-5)


def test_update_below_start_layer_is_rejected(tiny_model):
    captured = capture_layer_inputs(tiny_model, _batch(), 2)
    with pytest.raises(ValueError, match="below the captured start layer"):
        completion_nll(tiny_model, captured, {1: _update(tiny_model, "vector", "block")})
