"""The fast path (capture once, replay layers l..N) equals the plain full forward."""
from __future__ import annotations

import pytest
import torch

from conftest import build_tiny_model
from easyedit_split.interventions import DynamicWeightUpdate, attach
from easyedit_split.prompts import IGNORE_INDEX, TokenBatch
from easyedit_split.fastpath.replay import (
    capture_layer_inputs, capture_prefix, completion_nll, full_forward_nll, nll_from_hidden,
    replay_hidden_after_prefix, shared_prefix_length,
)


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


# ----------------------------------------------------------------------------- prefix cache


def _prefixed_batch(lengths=(11, 8, 10), shared=4, prompt=6):
    """`_batch` whose first `shared` tokens are the same in every row."""
    batch = _batch(lengths, prompt)
    batch.input_ids[:, :shared] = batch.input_ids[0, :shared]
    return batch


def test_shared_prefix_length_stops_at_differences_padding_and_labels():
    batch = _prefixed_batch(shared=4, prompt=6)
    assert shared_prefix_length(batch) == 4
    batch.input_ids[:, :6] = batch.input_ids[0, :6]
    assert shared_prefix_length(batch) == 5  # label 6 is predicted from position 5, which must be replayed
    single = TokenBatch(batch.input_ids[1:2], batch.attention_mask[1:2], batch.labels[1:2])
    assert shared_prefix_length(single) == 5


def _steered_from(start, rows, width):
    """Positions mask: steer from `start` on (the prefix must stay unsteered to be cached)."""
    return (torch.arange(width) >= start).float().expand(len(rows), width)


def _prefix_cached_nll(model, batch, update, multipliers, rows, start_layer=2):
    captured = capture_layer_inputs(model, batch, start_layer)
    prefix = capture_prefix(model, captured, shared_prefix_length(batch))
    assert prefix.length == 4
    end = int(batch.attention_mask[rows].sum(dim=1).max())
    positions = _steered_from(prefix.length, rows, end)[:, prefix.length :]
    with attach(model, {start_layer: update}, multipliers, positions=positions):
        hidden = replay_hidden_after_prefix(model, captured, prefix, rows)
    assert hidden.shape[1] == end - prefix.length
    return nll_from_hidden(model, hidden, batch.labels[rows][:, prefix.length : end])


@pytest.mark.parametrize("method,component", [("vector", "block"), ("lora", "mlp_mid")])
def test_prefix_cached_replay_equals_full_forward_with_gradients(tiny_model, method, component):
    """Padded rows, a 4-token shared prefix, rows replayed up to the longest selected one (10 of 11)."""
    batch = _prefixed_batch()
    rows = torch.tensor([2, 1, 2])
    multipliers = torch.tensor([1.5, -0.5, 2.0])
    results = []
    for path in ("prefix", "plain"):
        update = _update(tiny_model, method, component)
        if path == "prefix":
            nll = _prefix_cached_nll(tiny_model, batch, update, multipliers, rows)
        else:
            picked = TokenBatch(batch.input_ids[rows], batch.attention_mask[rows], batch.labels[rows])
            with attach(tiny_model, {2: update}, multipliers, positions=_steered_from(4, rows, batch.input_ids.shape[1])):
                nll = full_forward_nll(tiny_model, picked, {})
        nll.mean.sum().backward()
        results.append((nll.sum.detach(), nll.count, [p.grad.clone() for p in update.parameters()]))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-5, atol=1e-5)
    assert torch.equal(results[0][1], results[1][1])
    for fast_grad, plain_grad in zip(results[0][2], results[1][2]):
        torch.testing.assert_close(fast_grad, plain_grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_prefix_cached_replay_builds_the_causal_mask_sdpa_leaves_out(family):
    """SDPA without padding captures no mask (is_causal); the suffix's queries need a bottom-right one."""
    model = build_tiny_model(family)
    model.config._attn_implementation = "sdpa"
    batch = _prefixed_batch(lengths=(10, 10, 10))
    captured = capture_layer_inputs(model, batch, 1)
    assert captured.layer_kwargs[0]["attention_mask"] is None
    update = _update(model, "vector", "block")
    got = _prefix_cached_nll(model, batch, update, 2.0, torch.arange(3), start_layer=1)
    with attach(model, {1: update}, 2.0, positions=_steered_from(4, torch.arange(3), 10)):
        expected = full_forward_nll(model, batch, {})
    torch.testing.assert_close(got.sum, expected.sum, rtol=1e-5, atol=1e-5)


def test_full_forward_rows_selects_and_trims(tiny_model):
    """`rows` gives each selected row's NLL as the whole batch does (the shorter row is trimmed)."""
    batch = _batch()
    whole = full_forward_nll(tiny_model, batch, {})
    picked = full_forward_nll(tiny_model, batch, {}, rows=torch.tensor([1, 2]))
    torch.testing.assert_close(picked.sum, whole.sum[1:], rtol=1e-5, atol=1e-5)
    assert picked.count.tolist() == whole.count[1:].tolist() == [3, 5]
