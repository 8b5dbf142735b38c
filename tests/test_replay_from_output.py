"""Replay from layer l+1 where exact: a vector added to layer l's output does not change that output,
so the fast paths capture it once and replay from l+1, adding the vector there (`replay.replay_layer`,
`replay._fire_output_hooks`). LoRA / local_weight read an input inside layer l: replay stays at l.

Expectations: the plain full forward (`full_forward_nll`, separate sequences per completion), and
counts of which layers' attention and MLP actually run (forward hooks on those submodules).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import build_tiny_model, seeded_update
from test_evaluation_scoring import assert_sweep_equals_plain
from test_replay import _batch as padded_batch

from easyedit_split.evaluation.sweep_nll import EncodedPair, score_encoded_pairs
from easyedit_split.fastpath import capture_cache
from easyedit_split.fastpath.replay import (
    capture_layer_inputs,
    capture_prefix,
    completion_nll,
    full_forward_nll,
    replay_hidden_after_prefix,
    replay_layer,
)
from easyedit_split.interventions import InterventionHandle
from easyedit_split.models import get_decoder_layers

LAYER = 2
CASES = [("vector", "block"), ("lora", "mlp_mid"), ("local_weight", "attn"), ("lora", "mlp")]


def _update(model, method, component, seed=4):
    return seeded_update(model, method, component, seed, scale=0.3)


def _batch():
    """Three right-padded rows of 11, 8, 10 ids sharing their first 4, labels from position 6."""
    return padded_batch((11, 8, 10), prompt=6, shared=4)


class LayerRuns:
    """Counts, per decoder layer, how often its attention and its MLP run (a layer whose forward is
    skipped runs neither, even when its own hooks fire)."""

    def __init__(self, model):
        self.counts = {}
        self.handles = []
        for index, layer in enumerate(get_decoder_layers(model)):
            for name in ("self_attn", "mlp"):
                def hook(module, args, output, key=(index, name)):
                    self.counts[key] = self.counts.get(key, 0) + 1
                self.handles.append(getattr(layer, name).register_forward_hook(hook))

    def ran(self, name="mlp"):
        return {layer: count for (layer, kind), count in sorted(self.counts.items()) if kind == name}

    def remove(self):
        for handle in self.handles:
            handle.remove()


def test_replay_layer_decides_by_what_the_update_reads():
    model = build_tiny_model("llama")  # 4 layers
    vector = _update(model, "vector", "block")
    assert replay_layer(model, LAYER, [vector]) == LAYER + 1
    assert replay_layer(model, LAYER, []) == LAYER + 1  # nothing at the layer: its output is unsteered
    for method, component in CASES[1:]:
        assert replay_layer(model, LAYER, [_update(model, method, component)]) == LAYER
    assert replay_layer(model, LAYER, [vector, _update(model, "lora", "mlp_mid")]) == LAYER
    assert replay_layer(model, 3, [vector]) == 3  # the last layer: nothing above to start from


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma2"])
@pytest.mark.parametrize("method,component", CASES)
def test_fast_path_from_the_chosen_layer_equals_the_full_forward(family, method, component):
    """Capture at `replay_layer`, replay after a cached 4-token prefix with per-row multipliers (a
    null-it-out row for the vector): NLLs and gradients equal the plain full forward (1e-5, today's)."""
    model = build_tiny_model(family)
    batch = _batch()
    update = _update(model, method, component)
    start = replay_layer(model, LAYER, [update])
    assert start == (LAYER + 1 if method == "vector" else LAYER)
    captured = capture_layer_inputs(model, batch, start)
    prefix = capture_prefix(model, captured, 4)
    multipliers = torch.tensor([1.5, -2.0, 0.0])
    null_out = torch.tensor([False, False, True]) if method == "vector" else None
    steered = (torch.arange(batch.input_ids.shape[1]) >= 4).float().expand_as(batch.input_ids)
    with InterventionHandle(model, {LAYER: update}, multipliers, positions=steered[:, 4:], null_out=null_out):
        hidden = replay_hidden_after_prefix(model, captured, prefix, end=batch.input_ids.shape[1])
    from easyedit_split.fastpath.replay import nll_from_hidden
    fast = nll_from_hidden(model, hidden, batch.labels[:, 4:])
    fast.sum.sum().backward()
    fast_grads = [p.grad.clone() for p in update.parameters()]
    update.zero_grad()
    with InterventionHandle(model, {LAYER: update}, multipliers, positions=steered, null_out=null_out):
        plain = full_forward_nll(model, batch, {})
    plain.sum.sum().backward()
    torch.testing.assert_close(fast.sum, plain.sum, rtol=1e-5, atol=1e-5)
    assert fast.count.tolist() == plain.count.tolist()
    for got, expected in zip(fast_grads, [p.grad for p in update.parameters()]):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_a_vector_replay_runs_layer_l_only_in_the_capture():
    model = build_tiny_model("llama")
    batch = _batch()
    vector = _update(model, "vector", "block")
    runs = LayerRuns(model)
    try:
        captured = capture_layer_inputs(model, batch, replay_layer(model, LAYER, [vector]))
        assert runs.ran() == {0: 1, 1: 1, 2: 1}  # the capture forward stops before layer 3 runs
        runs.counts.clear()
        for m in (0.5, 1.0, 2.0):
            completion_nll(model, captured, {LAYER: vector}, m)
        assert runs.ran() == {3: 3} and runs.ran("self_attn") == {3: 3}  # layer 2 never again
        runs.counts.clear()
        lora = _update(model, "lora", "mlp_mid")
        captured_at_l = capture_layer_inputs(model, batch, replay_layer(model, LAYER, [lora]))
        runs.counts.clear()
        completion_nll(model, captured_at_l, {LAYER: lora}, 1.0)
        assert runs.ran() == {2: 1, 3: 1}
    finally:
        runs.remove()


def _pairs(seed=0, shared=(5, 6, 7, 8)):
    generator = torch.Generator().manual_seed(seed)
    ids = lambda n: tuple(torch.randint(3, 97, (n,), generator=generator).tolist())  # noqa: E731
    return [EncodedPair(shared + ids(p), ids(a), ids(b)) for p, a, b in [(5, 3, 4), (3, 6, 2), (7, 2, 2), (4, 4, 5)]]


@pytest.mark.parametrize("method,component", CASES)
def test_sweep_runs_layer_l_once_for_every_multiplier_where_exact(method, component):
    """K = 3: a vector sweep runs layer l in the capture only (`info['replay_from'] == l + 1`); LoRA /
    local_weight replay it per row. Scores equal separate full forwards steering positions >= 4."""
    capture_cache.clear_memory_cache()
    model = build_tiny_model("qwen2")
    pairs = _pairs()
    updates = {LAYER: _update(model, method, component)}
    multipliers = [-1.0, 0.5, 2.0]
    runs = LayerRuns(model)
    try:
        scores = score_encoded_pairs(model, pairs, updates, multipliers, batch_size=64, steer_from=4)
    finally:
        runs.remove()
    exact = method == "vector"
    assert scores.info["replay_from"] == (LAYER + 1 if exact else LAYER)
    # capture: one forward over the rows (layers 0..start-1, stopped before start) and the prefix's one row at layers start..3
    layer_l = runs.ran()[LAYER]
    assert layer_l == (1 if exact else 1 + 1)  # capture / prefix + one replay batch of 12 rows
    assert_sweep_equals_plain(model, pairs, updates, multipliers, scores, steer_from=4)


def test_an_unsteered_pass_naming_the_layer_serves_every_later_sweep():
    """The evaluator's unsteered pass names the steered layer as start_layer and captures there; a
    LoRA sweep at that layer reuses the capture, a vector sweep (from l + 1) is made from it."""
    capture_cache.clear_memory_cache()
    model = build_tiny_model("llama")
    pairs = _pairs(seed=1)
    unsteered = score_encoded_pairs(model, pairs, {}, [0.0], start_layer=LAYER, steer_from=4)
    assert unsteered.info["replay_from"] == LAYER and unsteered.info["capture_source"] == "computed"
    lora = score_encoded_pairs(model, pairs, {LAYER: _update(model, "lora", "mlp_mid")}, [1.0], start_layer=LAYER,
                               steer_from=4)
    assert lora.info["replay_from"] == LAYER and lora.info["capture_source"] == "memory"
    steered = score_encoded_pairs(model, pairs, {LAYER: _update(model, "vector", "block")}, [0.0, 1.0],
                                  start_layer=LAYER, steer_from=4)
    assert steered.info["replay_from"] == LAYER + 1 and steered.info["capture_source"] == "memory (layer below)"
    np.testing.assert_allclose(steered.matching_sum[0], unsteered.matching_sum[0], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_a_capture_one_layer_up_is_made_from_the_kept_one_below(family):
    """A vector trained or scored from l + 1 after a capture at l (CAA, the unsteered pass) runs layer l
    once over the kept capture: equal to capturing at l + 1 directly, for the same rows and for a subset."""
    from easyedit_split.fastpath.packing import build_layout, select_rows

    model = build_tiny_model(family)
    lay = build_layout(_pairs(seed=2))
    for layout in (lay, select_rows(lay, torch.tensor([1, 3]))):
        capture_cache.clear_memory_cache()
        assert capture_cache.capture(model, lay, LAYER, 4).source == "computed"
        derived = capture_cache.capture(model, layout, LAYER + 1, 4)
        direct = capture_cache.capture(model, layout, LAYER + 1, 4, use_cache=False)
        assert derived.source == "memory (layer below)" and derived.inputs.start_layer == LAYER + 1
        width = int(layout.lengths.max())
        torch.testing.assert_close(derived.inputs.hidden_states[:, :width], direct.inputs.hidden_states[:, :width],
                                   rtol=1e-5, atol=1e-5)
        assert derived.prefix.length == direct.prefix.length == 4 and derived.prefix.start_layer == LAYER + 1
        for got, expected in zip(derived.prefix.keys + derived.prefix.values, direct.prefix.keys + direct.prefix.values):
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        assert capture_cache.capture(model, layout, LAYER + 1, 4).source == "memory"


def test_firing_the_hooks_below_restores_a_wrapped_forward():
    """A layer whose forward is an instance attribute (accelerate's device hooks) keeps it."""
    from easyedit_split.fastpath.replay import _fire_output_hooks

    model = build_tiny_model("llama")
    layer = get_decoder_layers(model)[LAYER]
    wrapped = layer.forward
    layer.forward = wrapped  # an instance attribute, as accelerate's add_hook_to_module leaves it
    hidden = torch.randn(2, 3, 32)
    vector = _update(model, "vector", "block")
    with InterventionHandle(model, {LAYER: vector}, 2.0):
        out = _fire_output_hooks(model, LAYER + 1, hidden)
    torch.testing.assert_close(out, hidden + 2.0 * vector.bias.detach())
    assert layer.__dict__["forward"] is wrapped
    del layer.forward
    assert _fire_output_hooks(model, LAYER + 1, hidden) is hidden and "forward" not in layer.__dict__
