"""The capture with the prefix every row shares run once through the layers below the start layer.

Every packed row starts with the same chat-template prefix (the system turn and the user header:
24 tokens for the default model), unpadded and never steered. Attention is causal, so its states
at every layer are the same in every row: `replay.capture_layer_inputs` runs it through layers
`0..l-1` once, in one row, and the rest of every row on its keys and values, as the replay above
`l` does (`replay.capture_prefix`, `replay.replay_hidden_after_prefix`). The masks the rows get
(hidden keys of `attention_mask: pad_id`, sliding windows) are the captured 4-d masks sliced to
the positions run, so the prefix run and the rest see exactly the keys the full forward shows them.

Used only where that gives the full forward's numbers (to float rounding; `tests/test_capture_prefix.py`):
at least `MIN_CAPTURE_PREFIX` shared tokens, two rows or more, a start layer above 0, eager or SDPA
attention, full or sliding layers only, no hook on a layer below the start (a hook may depend on
the rows it sees), layer kwargs this module can slice, a prefix whose mask and positions are the
same in every row and see nothing after it, and attention that calls `cache.update`. Otherwise the
capture runs the full forward (logged at debug level).
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Any, Iterator, Mapping, Optional, Sequence

import torch
from torch import nn

from ..models import get_decoder_layers, num_layers
from ..prompts import TokenBatch
from .recording import record_activations
from .replay import (
    CapturedInputs,
    PrefixKeyValues,
    _first_of_each_type,
    _layer_types,
    _PrefixedKeyValues,
    _recorded_kwargs,
    _run_layers,
)

logger = logging.getLogger(__name__)

__all__ = ["MIN_CAPTURE_PREFIX", "capture_after_prefix"]

MIN_CAPTURE_PREFIX = 8
"""A shared prefix shorter than this runs in every row of the capture (its one-row pass would not pay)."""

# The layer kwargs this module knows how to slice (anything else: the full forward).
_SLICEABLE_KWARGS = frozenset({"attention_mask", "position_ids", "position_embeddings", "cache_position", "cache",
                               "past_key_values", "past_key_value", "use_cache", "output_attentions"})


def capture_after_prefix(model: nn.Module, batch: TokenBatch, start_layer: int, length: int) -> Optional[CapturedInputs]:
    """`capture_layer_inputs` with the first `length` positions (the same in every row) run through
    layers `0..start_layer-1` once, in row 0, and the rest of every row on their keys/values.

    The forward runs only until layer 0 (and the first layer of each other attention type) has
    received its inputs: the embeddings as the model makes them (Gemma scales them) and the kwargs.
    The prefix's keys/values are recorded per layer (`_PrefixedKeyValues(record=True)`) and its
    states at the start layer's input copied to every row; positions `length..` of all rows then
    run on those keys/values with the kwargs sliced to them (`_slice_positions`), as
    `replay_hidden_after_prefix` does above the start layer. Equal to the full forward to float
    rounding; None (the caller runs the full forward) when the model or the batch does not qualify.
    """
    rows, width = batch.input_ids.shape
    length = min(length, width - 1)  # every row keeps a position to run in the batch
    why = _refusal(model, batch, start_layer, length)
    types = _layer_types(model)
    first_of_type = _first_of_each_type(types, 0)
    recorded = sorted({0, *first_of_type.values()})
    layers = get_decoder_layers(model)
    if why is None:
        with torch.no_grad(), _skipped(layers[: recorded[-1]]), \
                record_activations(model, recorded, stop_before=recorded[-1], inputs=True, outputs=False) as record:
            model(input_ids=batch.input_ids, attention_mask=batch.model_mask(), use_cache=False)
        why = next((f"layer {i}'s kwargs" for i in recorded if not _prefix_is_shared(record.kwargs[i], length)), None)
    if why is not None:
        logger.debug("capture at layer %d: the full forward (shared prefix not run once: %s)", start_layer, why)
        return None
    kwargs = _recorded_kwargs(record.kwargs, types, 0, first_of_type)
    embeddings = record.inputs[0].detach()
    below = CapturedInputs(0, embeddings, kwargs, batch)
    prefix = PrefixKeyValues(0, length, [], [])
    with torch.no_grad():
        head = _run_layers(model, below, embeddings[:1, :length], torch.zeros(1, dtype=torch.long), 0, length,
                           _PrefixedKeyValues(prefix, record=True), fire_below=False, stop_layer=start_layer)
        if len(prefix.keys) != start_layer:
            logger.debug("capture at layer %d: the full forward (attention did not call cache.update)", start_layer)
            return None
        tail = _run_layers(model, below, embeddings[:, length:], torch.arange(rows), length, width,
                           _PrefixedKeyValues(prefix), fire_below=False, stop_layer=start_layer)
    hidden = torch.cat([head.expand(rows, -1, -1), tail], dim=1)
    return CapturedInputs(start_layer, hidden, kwargs[start_layer:], batch)


def _refusal(model: nn.Module, batch: TokenBatch, start_layer: int, length: int) -> Optional[str]:
    """Why the capture cannot run the first `length` positions once (None: it can)."""
    config = getattr(model.config, "text_config", None) or model.config
    implementation = getattr(config, "_attn_implementation", None)
    ids, mask, model_mask = batch.input_ids[:, :length], batch.attention_mask[:, :length], batch.model_mask()[:, :length]
    if length < MIN_CAPTURE_PREFIX or len(batch) < 2 or not 0 < start_layer < num_layers(model):
        return f"{length} prefix tokens, {len(batch)} rows, start layer {start_layer}"
    if implementation not in ("eager", "sdpa"):
        return f"attention implementation {implementation!r}"
    if set(_layer_types(model)) - {"full_attention", "sliding_attention"}:
        return f"layer types {sorted(set(_layer_types(model)))}"
    if not (bool((ids == ids[:1]).all()) and bool((mask == 1).all()) and bool((model_mask == model_mask[:1]).all())):
        return "the rows differ within the prefix"
    hooked = any(m._forward_hooks or m._forward_pre_hooks for layer in get_decoder_layers(model)[:start_layer]
                 for m in layer.modules())  # (global hooks, e.g. FLOP counters' module trackers, see every module)
    return "a hook sits on a layer below the start layer" if hooked else None


def _prefix_is_shared(kwargs: Mapping[str, Any], length: int) -> bool:
    """Whether a layer's recorded kwargs give the first `length` positions the same mask and
    positions in every row, with no key after them visible (the prefix depends on itself only)."""
    if set(kwargs) - _SLICEABLE_KWARGS:
        return False
    mask = kwargs.get("attention_mask")
    if mask is not None:
        if not isinstance(mask, torch.Tensor) or mask.dim() != 4:
            return False
        head = mask[:, :, :length]
        later = head[..., length:]
        hidden = ~later if mask.dtype == torch.bool else later <= torch.finfo(mask.dtype).min / 2
        if not (bool(torch.equal(head, head[:1].expand_as(head))) and bool(hidden.all())):
            return False
    positions = [kwargs.get("position_ids"), *(kwargs.get("position_embeddings") or ())]
    return all(v[:, :length].equal(v[:1, :length].expand_as(v[:, :length])) for v in positions if isinstance(v, torch.Tensor))


@contextmanager
def _skipped(layers: Sequence[nn.Module]) -> Iterator[None]:
    """`layers` return their input without running (an instance-attribute forward, as in
    `_fire_output_hooks`): a forward that only records what a later layer receives."""
    owned = [(layer, layer.__dict__.get("forward")) for layer in layers]
    for layer, _ in owned:
        layer.forward = lambda hidden_states, *args, **kwargs: hidden_states
    try:
        yield
    finally:
        for layer, own in owned:
            if own is None:
                del layer.forward
            else:
                layer.forward = own
