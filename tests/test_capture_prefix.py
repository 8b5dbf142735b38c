"""The capture runs the prefix every packed row shares once through the layers below the start
layer (`fastpath/prefix_capture.py`): the same inputs as the full-forward capture at every
position, the same replayed NLLs as the plain path, fewer tokens through the lower layers, and
the full forward wherever that would not be exact."""
from __future__ import annotations

import pytest
import torch
from conftest import build_tiny_model
from test_attention_mask_rule import HIDE, _by_hand_nll, _encoded, _terms_of_step
from test_evaluation_scoring import _update, assert_sweep_equals_plain

from easyedit_split.evaluation.sweep_nll import score_encoded_pairs
from easyedit_split.fastpath import capture_cache, packing, prefix_capture
from easyedit_split.fastpath.packing import EncodedPair, build_layout
from easyedit_split.fastpath.recording import record_activations
from easyedit_split.models import get_decoder_layers
from easyedit_split.prepared_pairs import PreparedPairs
from easyedit_split.prompts import collate

PREFIX = (11, 12, HIDE, 13, 14, 15, 16, 17, 18, 19)  # 10 shared tokens; HIDE is a hidden key under pad_id


def _pairs(seed: int = 0, prefix: tuple[int, ...] = PREFIX) -> list[EncodedPair]:
    """Three pairs: the prefix, a prompt of 1..6 tokens (HIDE in one), completions of 1..5 (padding)."""
    generator = torch.Generator().manual_seed(seed)
    ids = lambda n: tuple(torch.randint(20, 90, (n,), generator=generator).tolist())
    pairs = [EncodedPair(prefix + ids(n), ids(m), ids(k)) for n, m, k in ((3, 2, 4), (1, 5, 2), (6, 1, 1))]
    pairs[2] = EncodedPair(pairs[2].prompt_ids[:-2] + (HIDE,) + pairs[2].prompt_ids[-1:], pairs[2].matching_ids,
                           pairs[2].not_matching_ids)
    return pairs


def _layout(hide: bool, prefix: tuple[int, ...] = PREFIX):
    lay = build_layout(_pairs(prefix=prefix), "packed")
    if hide:
        lay.hidden_keys = (lay.input_ids == HIDE) & lay.valid
    return lay


@pytest.fixture
def prefix_runs(monkeypatch):
    """The results of `capture_after_prefix` (None when it fell back to the full forward)."""
    results = []
    original = prefix_capture.capture_after_prefix

    def spy(*args, **kwargs):
        results.append(original(*args, **kwargs))
        return results[-1]

    monkeypatch.setattr(prefix_capture, "capture_after_prefix", spy)
    return results


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma2"])
@pytest.mark.parametrize("start_layer", [1, 2])
@pytest.mark.parametrize("hide", [False, True])
def test_the_capture_equals_the_full_forward_capture_at_every_position(family, start_layer, hide, prefix_runs):
    """Hidden states at the start layer's input, prefix positions included, and the kwargs of the
    layers above, against the capture that runs every row whole (gemma2: rows longer than twice its
    sliding window of 4, the prefix too)."""
    model = build_tiny_model(family)
    lay = _layout(hide)
    assert packing.shared_columns(lay) == len(PREFIX) and lay.input_ids.shape[1] > 2 * 4
    new = packing.capture_layout(model, lay, start_layer)
    assert len(prefix_runs) == 1 and prefix_runs[0] is new  # the prefix path ran, not the fallback
    old = packing.capture_layout(model, lay, start_layer, reuse_prefix=False)
    assert len(prefix_runs) == 1
    assert new.start_layer == old.start_layer == start_layer and new.hidden_states.shape == old.hidden_states.shape
    torch.testing.assert_close(new.hidden_states, old.hidden_states, rtol=1e-5, atol=1e-5)
    assert len(new.layer_kwargs) == len(old.layer_kwargs) == 4 - start_layer
    for mine, theirs in zip(new.layer_kwargs, old.layer_kwargs):
        assert mine.keys() == theirs.keys()
        for key in mine:
            a, b = (v if isinstance(v, tuple) else (v,) for v in (mine[key], theirs[key]))
            for x, y in zip(a, b):
                assert torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y, key
    if hide:  # the hidden key matters: the prefix positions that see it (gemma2 layer 0: a window of 4) differ
        shown = packing.capture_layout(model, _layout(False), start_layer)
        assert (shown.hidden_states[:, 3:6] - new.hidden_states[:, 3:6]).abs().amax(dim=-1).min() > 1e-4


class _TokensThrough:
    """Tokens each decoder layer's MLP runs on, counted by wrapping its forward (an instance
    attribute, not a hook: a hook on a layer below the start turns the prefix path off)."""

    def __init__(self, model):
        self.counts, self.mlps = {}, []
        for index, layer in enumerate(get_decoder_layers(model)):
            mlp, original = layer.mlp, layer.mlp.forward

            def counted(hidden, *args, index=index, original=original, **kwargs):
                self.counts[index] = self.counts.get(index, 0) + hidden.shape[0] * hidden.shape[1]
                return original(hidden, *args, **kwargs)

            mlp.forward = counted
            self.mlps.append(mlp)

    def remove(self):
        for mlp in self.mlps:
            del mlp.forward


@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_the_prefix_runs_once_through_the_layers_below_the_start(family, prefix_runs):
    """Rows 3, width W, prefix 10: layers 0..2 run 10 + 3 * (W - 10) tokens instead of 3 * W, and the
    start layer does not run in the capture (nor, for gemma2, layer 0 twice to reach layer 1's kwargs)."""
    model = build_tiny_model(family)
    lay = _layout(hide=True)
    rows, width = lay.input_ids.shape
    counter = _TokensThrough(model)
    try:
        packing.capture_layout(model, lay, 3)
        new = dict(counter.counts)
        counter.counts.clear()
        packing.capture_layout(model, lay, 3, reuse_prefix=False)
        old = dict(counter.counts)
    finally:
        counter.remove()
    assert prefix_runs[0] is not None
    assert new == {layer: len(PREFIX) + rows * (width - len(PREFIX)) for layer in (0, 1, 2)}
    assert old == {layer: rows * width for layer in (0, 1, 2)}


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma2"])
@pytest.mark.parametrize("method, component", [("vector", "block"), ("lora", "mlp_mid")])
def test_sweep_nlls_from_the_capture_equal_the_plain_forward(family, method, component, prefix_runs):
    """The K = 2 sweep (a vector at layer 1 replays from 2, LoRA from 1) steered after the prefix,
    against one full forward per completion and multiplier."""
    capture_cache.clear_memory_cache()
    model = build_tiny_model(family)
    pairs = _pairs(seed=2)
    updates = {1: _update(model, method, component)}
    scores = score_encoded_pairs(model, pairs, updates, [-1.0, 2.0], batch_size=64, steer_from=len(PREFIX))
    assert prefix_runs and all(r is not None for r in prefix_runs)
    assert_sweep_equals_plain(model, pairs, updates, [-1.0, 2.0], scores, steer_from=len(PREFIX))


def _synthetic_pad_id(n_examples: int = 4, seed: int = 3) -> PreparedPairs:
    """test_attention_mask_rule's rows with a 10-token prefix: HIDE in the prefix, in a prompt and in
    completions (pad_id hides it), completions of 2..4 tokens."""
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n_examples):
        prompt = list(PREFIX) + torch.randint(20, 90, (3,), generator=generator).tolist()
        if i % 2:
            prompt[-2] = HIDE
        for length in (2 + i % 2, 4 - i % 3):
            completion = torch.randint(20, 90, (length,), generator=generator).tolist()
            completion[(i + length) % length] = HIDE
            rows.append((prompt, completion))
    return PreparedPairs(collate(_encoded(rows), pad_token_id=0, hide_token_id=HIDE), prefix_length=len(PREFIX))


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma2"])
def test_a_training_step_under_pad_id_equals_the_plain_path(family, prefix_runs):
    """A RePS step (vector at layer 1) on the capture with the prefix run once, hidden keys in the
    prefix: NLLs, references and loss equal the plain path's; the unsteered references equal Hugging
    Face's forward with the 2-d mask written out."""
    capture_cache.clear_memory_cache()
    model = build_tiny_model(family)
    prepared = _synthetic_pad_id()
    fast_loss, fast_terms = _terms_of_step(model, prepared, fast=True)
    assert prefix_runs and all(r is not None for r in prefix_runs)
    assert bool(prepared.layout.hidden_keys[:, 2].all())
    plain_loss, plain_terms = _terms_of_step(model, prepared, fast=False)
    for fast, plain in zip(fast_terms, plain_terms):
        for name in ("target_nll_sum", "opposite_nll_sum", "target_ref_nll_sum", "opposite_ref_nll_sum"):
            torch.testing.assert_close(getattr(fast, name), getattr(plain, name), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast_loss, plain_loss, rtol=1e-5, atol=1e-5)
    reference = prepared.compute_reference(model, fast=True)
    torch.testing.assert_close(reference, _by_hand_nll(model, prepared), rtol=1e-5, atol=1e-5)


def test_the_full_forward_where_the_prefix_path_would_not_be_exact_or_pay(prefix_runs):
    """Fallbacks, each still the full-forward result: a prefix under 8 tokens, start layer 0, a hook
    on a layer below the start, flash attention named in the config; `reuse_prefix=False` never tries."""
    model = build_tiny_model("llama")
    short = _layout(False, prefix=PREFIX[:7])
    assert packing.shared_columns(short) == 7
    packing.capture_layout(model, short, 2)
    assert prefix_runs == [None]
    packing.capture_layout(model, _layout(False), 0)
    assert prefix_runs == [None]  # start layer 0: nothing below it to save
    lay = _layout(False)
    expected = packing.capture_layout(model, lay, 2, reuse_prefix=False).hidden_states
    assert len(prefix_runs) == 1
    seen = []
    handle = model.model.layers[1].mlp.register_forward_hook(lambda module, args, output: seen.append(args[0].shape))
    try:
        hooked = packing.capture_layout(model, lay, 2)
    finally:
        handle.remove()
    assert prefix_runs[-1] is None and seen == [lay.input_ids.shape + (32,)]  # every row whole, as the hook expects
    torch.testing.assert_close(hooked.hidden_states, expected, rtol=0, atol=0)
    model.config._attn_implementation = "flash_attention_2"
    assert prefix_capture._refusal(model, packing.TokenBatch(lay.input_ids, lay.valid.long(), lay.input_ids), 2, 10) \
        == "attention implementation 'flash_attention_2'"


def test_a_prefix_whose_mask_sees_a_later_key_is_refused():
    """The recorded masks are checked, not assumed: a prefix query that attends past the prefix (or
    rows whose prefix masks differ) falls back."""
    mask = torch.zeros(2, 1, 12, 12)
    mask.masked_fill_(torch.ones(12, 12, dtype=torch.bool).triu(1), torch.finfo(torch.float32).min)
    assert prefix_capture._prefix_is_shared({"attention_mask": mask}, 10)
    leaky = mask.clone()
    leaky[1, 0, 9, 10] = 0.0
    assert not prefix_capture._prefix_is_shared({"attention_mask": leaky}, 10)
    different = mask.clone()
    different[1, 0, 5, 2] = torch.finfo(torch.float32).min
    assert not prefix_capture._prefix_is_shared({"attention_mask": different}, 10)
    positions = torch.arange(12).repeat(2, 1)
    assert prefix_capture._prefix_is_shared({"position_ids": positions}, 10)
    positions[1, 4] = 7
    assert not prefix_capture._prefix_is_shared({"position_ids": positions}, 10)
    assert not prefix_capture._prefix_is_shared({"alibi": None}, 10)  # a kwarg it cannot slice


def test_record_activations_stop_before_records_and_does_not_run_that_layer():
    model = build_tiny_model("llama")
    counter = _TokensThrough(model)
    try:
        with torch.no_grad(), record_activations(model, [2], stop_before=2, inputs=True, outputs=False) as record:
            model(input_ids=torch.tensor([[5, 6, 7]]))
    finally:
        counter.remove()
    assert counter.counts == {0: 3, 1: 3} and record.inputs[2].shape == (1, 3, 32) and 2 in record.kwargs
