"""The fast path: run the layers below the intervention once, replay only the rest.

Layers below layer `l` do not depend on an intervention at `l`. `capture_layer_inputs` runs the
model once (through `recording.record_activations`) and keeps the input hidden states of layer
`l` and the keyword arguments that every layer from `l` on receives (attention masks, rotary
embeddings; Gemma2 alternates sliding and global masks, so each layer gets those of its type). `replay_hidden` then runs layers `l..N` on any
selection of captured rows, e.g. K copies of each example for a K-multiplier sweep, and
`completion_nll` turns the result into per-row completion NLLs, applying the LM head only at
completion positions.

A prefix shared by every row (the chat template's system turn and user header) is unsteered
and causal, so its keys and values at layers `l..N` are the same in every row and every step.
`capture_prefix` computes them once (one row); `replay_hidden_after_prefix` then replays only
the positions after it, up to the longest selected row, attending to the stored prefix keys
and values. The capture itself does the same below `l` (`shared_prefix`, `prefix_capture.py`):
the prefix runs through layers `0..l-1` once, in one row, and the rest of every row on its keys
and values; the forward that records the embeddings and kwargs stops before any layer it need not run.

A vector added to layer `l`'s output does not change that output, and nothing else in layer `l`
reads it: `replay_layer` then starts the replay at `l + 1` from a capture of layer `l`'s unsteered
output, and every replay fires the output hooks of the layer below its start on that captured
output (`_fire_output_hooks`), so the vector (or a recording hook) acts as in a full forward while
layer `l` runs only once, in the capture. An update that reads an input inside layer `l` (`lora`,
`local_weight`) keeps the replay at `l` (its hook would find no captured input and raise).

`replay_hidden_at` replays a selection of positions per row (e.g. only the prompt and the completion
a loss reads, skipping the packed row's other completion).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import torch
from torch import nn

from ..interventions import DynamicWeightUpdate, attach
from ..models import get_decoder_layers, num_layers
from ..prompts import IGNORE_INDEX, TokenBatch
from .recording import record_activations
from .token_nll import completion_token_nll

# Layer kwargs whose first dimension is the batch; everything else is shared by all rows.
_BATCH_FIRST_KWARGS = ("attention_mask", "position_ids", "position_embeddings")


@dataclass
class CapturedInputs:
    """Inputs of decoder layers `start_layer..N-1` for one token batch (no intervention applied)."""

    start_layer: int
    hidden_states: torch.Tensor
    layer_kwargs: list[dict[str, Any]]
    batch: TokenBatch

    def __len__(self) -> int:
        return self.hidden_states.shape[0]


def _layer_types(model: nn.Module) -> list[str]:
    """Each decoder layer's attention type (`config.layer_types`; one type when the config has none)."""
    config = getattr(model.config, "text_config", None) or model.config
    count = len(get_decoder_layers(model))
    types = getattr(config, "layer_types", None)
    return list(types[:count]) if types else ["full_attention"] * count


def output_only(update: DynamicWeightUpdate) -> bool:
    """Whether an update acts on its layer's output alone (a vector: `h + m * v`, the null-it-out
    projection of `h`): then the layer's own output does not depend on it."""
    return not update.reads_input


def replay_layer(model: nn.Module, layer: int, updates: Sequence[DynamicWeightUpdate]) -> int:
    """The first layer a replay for `updates` at `layer` must run: `layer + 1` when each of them acts
    on the layer's output alone (no update at all counts too) and a later layer exists, else `layer`.

    Exact: the replay from `layer + 1` adds the update to the captured unsteered output of `layer`,
    which is what the full forward adds it to (`_fire_output_hooks`).
    """
    if layer + 1 < num_layers(model) and all(output_only(u) for u in updates):
        return layer + 1
    return layer


def _fire_output_hooks(model: nn.Module, start_layer: int, hidden: torch.Tensor) -> torch.Tensor:
    """The hooks of decoder layer `start_layer - 1` (interventions, recordings) applied to its output
    `hidden` (the captured input of `start_layer`), without running that layer: it is called with a
    forward that returns `hidden`, so its hooks fire exactly as in a full forward."""
    if start_layer == 0:
        return hidden
    layer = get_decoder_layers(model)[start_layer - 1]
    own = layer.__dict__.get("forward")  # accelerate's device hooks wrap forward as an instance attribute
    layer.forward = lambda *args, **kwargs: hidden  # an instance attribute: the class's forward is untouched
    try:
        output = layer(hidden)
    finally:
        if own is None:
            del layer.forward
        else:
            layer.forward = own
    return output[0] if isinstance(output, tuple) else output


def capture_layer_inputs(model: nn.Module, batch: TokenBatch, start_layer: int, shared_prefix: int = 0) -> CapturedInputs:
    """One unsteered forward that records what layers `start_layer..N-1` receive.

    The model passes every layer of one attention type (`config.layer_types`: full or sliding
    window) the same keyword arguments (masks, rotary embeddings), which do not depend on the
    hidden states. So the forward stops once the start layer and the first later layer of each
    other type have received theirs (usually before the start layer runs), and the layers above
    reuse the arguments of their type.

    `shared_prefix`: leading positions that are the same in every row (tokens, mask, positions;
    `packing.capture_layout` counts them). From `prefix_capture.MIN_CAPTURE_PREFIX` tokens on they
    run through layers `0..start_layer-1` once, in one row, when the model qualifies
    (`prefix_capture.capture_after_prefix`; the same result to float rounding).
    """
    if shared_prefix > 0 and start_layer > 0:
        from .prefix_capture import capture_after_prefix  # it builds on this module

        captured = capture_after_prefix(model, batch, start_layer, shared_prefix)
        if captured is not None:
            return captured
    types = _layer_types(model)
    first_of_type = _first_of_each_type(types, start_layer)
    recorded = sorted({start_layer, *first_of_type.values()})
    with torch.no_grad(), record_activations(model, recorded, stop_before=recorded[-1], inputs=True, outputs=False) as record:
        model(input_ids=batch.input_ids, attention_mask=batch.model_mask(), use_cache=False)
    return CapturedInputs(
        start_layer=start_layer,
        hidden_states=record.inputs[start_layer].detach(),
        layer_kwargs=_recorded_kwargs(record.kwargs, types, start_layer, first_of_type),
        batch=batch,
    )


def _first_of_each_type(types: Sequence[str], start_layer: int) -> dict[str, int]:
    """The first layer from `start_layer` on of each attention type: whose recorded kwargs serve its type."""
    first: dict[str, int] = {}
    for index in range(start_layer, len(types)):
        first.setdefault(types[index], index)
    return first


def _recorded_kwargs(recorded: Mapping[int, Mapping[str, Any]], types: Sequence[str], start_layer: int,
                     first_of_type: Mapping[str, int]) -> list[dict[str, Any]]:
    """The kwargs of layers `start_layer..N-1`: their own when recorded, else those of their type's
    first recorded layer; without the model's cache (a replay brings its own)."""
    layer_kwargs = []
    for index in range(start_layer, len(types)):
        source = recorded[index if index in recorded else first_of_type[types[index]]]
        kept = {k: v for k, v in source.items() if k not in ("past_key_values", "past_key_value")}
        kept["use_cache"] = False
        layer_kwargs.append(kept)
    return layer_kwargs


def _select_rows(value: Any, rows: torch.Tensor, batch_size: int, device: Optional[torch.device] = None) -> Any:
    """`rows` of a batch-first value (tensors of shape [1, ...] are shared by all rows), moved to
    `device` (captured inputs may be kept in CPU memory while the model runs on a GPU)."""
    if isinstance(value, torch.Tensor):
        if value.dim() > 0 and value.shape[0] == batch_size and batch_size > 1:
            value = value.index_select(0, rows.to(value.device))
        return value if device is None else value.to(device)
    if isinstance(value, tuple):
        return tuple(_select_rows(v, rows, batch_size, device) for v in value)
    return value


def _concat_rows(values: list[Any]) -> Any:
    if isinstance(values[0], torch.Tensor):
        return torch.cat(values)
    if isinstance(values[0], tuple):
        return tuple(_concat_rows(list(parts)) for parts in zip(*values))
    return values[0]


def concat_captures(parts: list[CapturedInputs], device: Optional[torch.device] = None) -> CapturedInputs:
    """One capture from captures of consecutive row chunks of the same width (chunked capture
    under a memory budget), kept on `device` (e.g. CPU memory for a model on a GPU). Layers of one
    attention type share their masks and rotary tables; they stay shared (merged and moved once)."""
    first = parts[0]
    move = (lambda v: v) if device is None else (lambda v: _select_rows(v, torch.arange(0), 0, device))
    kwargs, done = [], {}
    for offset, layer in enumerate(first.layer_kwargs):
        merged = {}
        for key, value in layer.items():
            sources = [p.layer_kwargs[offset][key] for p in parts]
            identity = (key, *map(id, sources))
            if identity not in done:
                if key in _BATCH_FIRST_KWARGS and value is not None and len(parts) > 1:
                    value = _concat_rows([_rows_per_sample(v, len(p)) for v, p in zip(sources, parts)])
                done[identity] = move(value)
            merged[key] = done[identity]
        kwargs.append(merged)
    if len(parts) == 1:
        batch, hidden = first.batch, first.hidden_states
    else:
        batch = TokenBatch(*(torch.cat([getattr(p.batch, f) for p in parts]) for f in ("input_ids", "attention_mask", "labels")))
        hidden = torch.cat([p.hidden_states for p in parts])
    return CapturedInputs(first.start_layer, move(hidden), kwargs, batch.to(device or batch.input_ids.device))


def _rows_per_sample(value: Any, rows: int) -> Any:
    """A batch-first value with exactly `rows` rows (a one-row value shared by the batch is expanded)."""
    if isinstance(value, torch.Tensor):
        return value.expand(rows, *value.shape[1:]) if value.dim() > 0 and value.shape[0] == 1 and rows > 1 else value
    if isinstance(value, tuple):
        return tuple(_rows_per_sample(v, rows) for v in value)
    return value


def replay_hidden(model: nn.Module, captured: CapturedInputs, rows: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Last-layer hidden states for `rows` of the captured batch, running layers `start..N-1` only.

    Hooks attached to the model (interventions) fire as in a normal forward.
    """
    batch_size = len(captured)
    rows = torch.arange(batch_size) if rows is None else rows
    hidden = captured.hidden_states.index_select(0, rows.to(captured.hidden_states.device))
    hidden = _fire_output_hooks(model, captured.start_layer, hidden)
    layers = get_decoder_layers(model)
    for offset, layer in enumerate(layers[captured.start_layer :]):
        kwargs = {
            k: (_select_rows(v, rows, batch_size) if k in _BATCH_FIRST_KWARGS else v)
            for k, v in captured.layer_kwargs[offset].items()
        }
        output = layer(hidden, **kwargs)
        hidden = output[0] if isinstance(output, tuple) else output
    return hidden


@dataclass
class CompletionNLL:
    """Per-row completion NLL: `sum` over completion tokens and their `count`."""

    sum: torch.Tensor
    count: torch.Tensor

    @property
    def mean(self) -> torch.Tensor:
        return self.sum / self.count.clamp_min(1)


@dataclass
class PrefixKeyValues:
    """Keys and values of the first `length` positions at layers `start_layer..N-1`, one row.

    Valid for every row of the captured batch whose first `length` tokens are the same and not
    steered: nothing before them differs, and attention is causal.
    """

    start_layer: int
    length: int
    keys: list[torch.Tensor]  # per layer from start_layer: [1, kv_heads, length, head_dim] (RoPE applied)
    values: list[torch.Tensor]


class _PrefixedKeyValues:
    """The `cache` a replayed layer's attention calls `update` on: it puts the stored prefix
    keys/values (expanded to the batch) before the new ones, or, with `record`, stores the
    new ones (computing the prefix)."""

    def __init__(self, prefix: PrefixKeyValues, record: bool = False):
        self.prefix, self.record = prefix, record

    def update(self, keys: torch.Tensor, values: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any):
        if self.record:
            self.prefix.keys.append(keys.detach())
            self.prefix.values.append(values.detach())
            return keys, values
        index, batch = layer_idx - self.prefix.start_layer, keys.shape[0]
        cached_keys = self.prefix.keys[index].expand(batch, -1, -1, -1)
        cached_values = self.prefix.values[index].expand(batch, -1, -1, -1)
        return torch.cat([cached_keys, keys], dim=2), torch.cat([cached_values, values], dim=2)


def shared_prefix_length(batch: TokenBatch) -> int:
    """Leading positions with the same token in every row, none padded and none labelled (a
    label at position `t` is predicted from position `t - 1`, so that one must be replayed)."""
    ids, mask = batch.input_ids, batch.attention_mask
    same = (ids == ids[:1]).all(dim=0) & (mask == 1).all(dim=0)
    labelled = (batch.labels != IGNORE_INDEX).any(dim=0)
    same[:-1] &= ~labelled[1:]  # label t is predicted from position t - 1, which must be replayed
    differing = (~same).nonzero()
    return int(differing[0]) if differing.numel() else ids.shape[1]


def _slice_positions(
    layer: nn.Module, kwargs: Mapping[str, Any], rows: torch.Tensor, batch_size: int, start: int, end: int,
    device: torch.device,
) -> dict[str, Any]:
    """A layer's captured kwargs for `rows` and query positions `start..end-1` (keys `0..end-1`)."""
    sliced: dict[str, Any] = {}
    for key, value in kwargs.items():
        if key in _BATCH_FIRST_KWARGS:
            value = _select_rows(value, rows, batch_size, device)
        else:
            value = _select_rows(value, rows, 0, device)  # shared by all rows: only moved
        if key == "attention_mask":
            if value is not None:
                value = value[..., start:end, :end]
            elif start > 0:  # only SDPA leaves the mask out (no padding): is_causal would align top-left
                window = getattr(getattr(layer, "self_attn", None), "sliding_window", None)
                value = _causal_mask(start, end, window, device)
        elif key == "position_ids" and value is not None:
            value = value[:, start:end]
        elif key == "cache_position":
            value = value[start:end]
        elif key == "position_embeddings" and value is not None:
            value = tuple(v[:, start:end] for v in value)
        sliced[key] = value
    return sliced


def _causal_mask(start: int, end: int, sliding_window: Optional[int], device: torch.device) -> torch.Tensor:
    """Boolean [1, 1, end - start, end] mask (True = attend) for queries `start..end-1`."""
    query = torch.arange(start, end, device=device).unsqueeze(1)
    key = torch.arange(end, device=device).unsqueeze(0)
    allowed = key <= query
    if sliding_window:
        allowed &= key > query - sliding_window
    return allowed[None, None]


def _run_layers(
    model: nn.Module, captured: CapturedInputs, hidden: torch.Tensor, rows: torch.Tensor,
    start: int, end: int, cache: Optional[_PrefixedKeyValues], positions: Optional[torch.Tensor] = None,
    fire_below: bool = True, stop_layer: Optional[int] = None,
) -> torch.Tensor:
    """Layers `start_layer..N-1` (`..stop_layer-1` when given) on `hidden`: query positions
    `start..end-1`, or the selected `positions` ([rows, width], keys the prefix and the selection)
    when given."""
    layers = get_decoder_layers(model)
    cache_key = "cache" if "cache" in captured.layer_kwargs[0] else "past_key_values"
    if fire_below:
        hidden = _fire_output_hooks(model, captured.start_layer, hidden)
    for offset, layer in enumerate(layers[captured.start_layer : stop_layer]):
        if positions is None:
            kwargs = _slice_positions(layer, captured.layer_kwargs[offset], rows, len(captured), start, end, hidden.device)
        else:
            kwargs = _gather_positions(captured.layer_kwargs[offset], rows, len(captured), positions, start, hidden.device)
        if cache is not None:
            kwargs[cache_key] = cache
        output = layer(hidden, **kwargs)
        hidden = output[0] if isinstance(output, tuple) else output
    return hidden


def take_rows(model: nn.Module, captured: CapturedInputs, rows: torch.Tensor, width: int) -> CapturedInputs:
    """The capture of `rows` only, cut to the first `width` positions: what capturing those rows
    alone at that width gives (each row's states depend on its own tokens only; the padding of
    the wider capture is cut off). Kwargs shared by several layers stay shared."""
    layers = get_decoder_layers(model)[captured.start_layer :]
    device = captured.hidden_states.device
    done: dict[tuple[str, int], Any] = {}
    kwargs = []
    for layer, layer_kwargs in zip(layers, captured.layer_kwargs):
        cut = {}
        for key, value in layer_kwargs.items():
            identity = (key, id(value))
            if identity not in done:
                done[identity] = _slice_positions(layer, {key: value}, rows, len(captured), 0, width, device)[key]
            cut[key] = done[identity]
        kwargs.append(cut)
    index = rows.to(device)
    batch = TokenBatch(*(t.index_select(0, index.to(t.device))[:, :width]
                         for t in (captured.batch.input_ids, captured.batch.attention_mask, captured.batch.labels)))
    return CapturedInputs(captured.start_layer, captured.hidden_states.index_select(0, index)[:, :width].contiguous(),
                          kwargs, batch)


def replay_outputs(
    model: nn.Module, captured: CapturedInputs, layers: Sequence[int], rows: Optional[torch.Tensor] = None,
) -> dict[int, torch.Tensor]:
    """Outputs of decoder `layers` (at or above the captured start layer) at every position of
    `rows`, running layers `start..max(layers)` only (no intervention is needed: hooks fire)."""
    if min(layers) < captured.start_layer:
        raise ValueError(f"layers {sorted(layers)} lie below the captured start layer {captured.start_layer}")
    rows = torch.arange(len(captured)) if rows is None else rows
    run_device = next(get_decoder_layers(model)[captured.start_layer].parameters()).device
    hidden = captured.hidden_states.index_select(0, rows.to(captured.hidden_states.device)).to(run_device)
    width, wanted, outputs = hidden.shape[1], set(layers), {}
    for offset, layer in enumerate(get_decoder_layers(model)[captured.start_layer : max(layers) + 1]):
        kwargs = _slice_positions(layer, captured.layer_kwargs[offset], rows, len(captured), 0, width, hidden.device)
        output = layer(hidden, **kwargs)
        hidden = output[0] if isinstance(output, tuple) else output
        if captured.start_layer + offset in wanted:
            outputs[captured.start_layer + offset] = hidden
    return outputs


def capture_prefix(model: nn.Module, captured: CapturedInputs, length: int) -> PrefixKeyValues:
    """Keys/values of the first `length` positions at layers `start..N-1`, from captured row 0.

    `length` must not exceed `shared_prefix_length(captured.batch)`, and the prefix must stay
    unsteered in every replay that uses it.
    """
    prefix = PrefixKeyValues(captured.start_layer, length, [], [])
    if length == 0:
        return prefix
    row = torch.zeros(1, dtype=torch.long)
    with torch.no_grad():
        run_device = next(get_decoder_layers(model)[captured.start_layer].parameters()).device
        hidden = captured.hidden_states[:1, :length].to(run_device)
        _run_layers(model, captured, hidden, row, 0, length, _PrefixedKeyValues(prefix, record=True), fire_below=False)
    if len(prefix.keys) != len(captured.layer_kwargs):
        raise RuntimeError("capture_prefix: the layers' attention did not call cache.update; unsupported model")
    return prefix


def replay_hidden_after_prefix(
    model: nn.Module, captured: CapturedInputs, prefix: Optional[PrefixKeyValues], rows: Optional[torch.Tensor] = None,
    end: Optional[int] = None,
) -> torch.Tensor:
    """Last-layer hidden states of `rows` at positions `prefix.length..end-1` (`end`: by default
    the longest selected row), running layers `start..N-1` on those positions only.

    Equals `replay_hidden(...)[:, prefix.length:end]` as long as the prefix is not steered.
    Labels for the result are `labels[:, prefix.length:end]`.
    """
    rows = torch.arange(len(captured)) if rows is None else rows
    device = captured.hidden_states.device
    run_device = next(get_decoder_layers(model)[captured.start_layer].parameters()).device
    if end is None:
        end = int(captured.batch.attention_mask.index_select(0, rows.to(captured.batch.attention_mask.device)).sum(dim=1).max())
    start = 0 if prefix is None else prefix.length
    if prefix is not None and prefix.start_layer != captured.start_layer:
        raise ValueError(f"prefix keys/values start at layer {prefix.start_layer}, the capture at {captured.start_layer}")
    hidden = captured.hidden_states.index_select(0, rows.to(device))[:, start:end].to(run_device)
    cache = _PrefixedKeyValues(prefix) if start > 0 else None
    return _run_layers(model, captured, hidden, rows, start, end, cache)


def _gather_positions(
    kwargs: Mapping[str, Any], rows: torch.Tensor, batch_size: int, positions: torch.Tensor, start: int,
    device: torch.device,
) -> dict[str, Any]:
    """A layer's captured kwargs for `rows` and the query positions `positions` [rows, width] (all
    `>= start`); keys are positions `0..start-1` (the prefix cache) and then the selection."""
    count, width = positions.shape
    positions = positions.to(device)
    gathered: dict[str, Any] = {}
    for key, value in kwargs.items():
        if key in _BATCH_FIRST_KWARGS:
            value = _select_rows(value, rows, batch_size, device)
        else:
            value = _select_rows(value, rows, 0, device)
        if key == "attention_mask":
            if not isinstance(value, torch.Tensor) or value.dim() != 4:
                raise ValueError("replaying selected positions needs the captured 4-d attention mask (packed layouts have one)")
            value = value.expand(count, *value.shape[1:])
            heads, size = value.shape[1], value.shape[-1]
            value = value.gather(2, positions[:, None, :, None].expand(count, heads, width, size))
            keys = torch.cat([torch.arange(start, device=device).expand(count, start), positions], dim=1)
            value = value.gather(3, keys[:, None, None, :].expand(count, heads, width, keys.shape[1]))
        elif key == "position_ids" and value is not None:
            value = value.expand(count, -1).gather(1, positions)
        elif key == "cache_position":
            value = value[start : start + width]  # read by cache updates only (the prefix cache ignores it)
        elif key == "position_embeddings" and value is not None:
            value = tuple(v.expand(count, *v.shape[1:]).gather(1, positions.unsqueeze(-1).expand(count, width, v.shape[-1]))
                          for v in value)
        gathered[key] = value
    return gathered


def replay_hidden_at(
    model: nn.Module, captured: CapturedInputs, prefix: Optional[PrefixKeyValues], rows: torch.Tensor,
    positions: torch.Tensor,
) -> torch.Tensor:
    """Last-layer hidden states `[len(rows), width]` of `rows` at the packed positions `positions`
    ([rows, width], each row increasing and `>= prefix.length`), running layers `start..N-1` on
    those positions only.

    Exact when every key a selected query attends to is selected (or in the prefix): e.g. a packed
    row's prompt and one completion, whose mask hides the other completion from them. Hooks fire.
    """
    start = 0 if prefix is None else prefix.length
    if prefix is not None and prefix.start_layer != captured.start_layer:
        raise ValueError(f"prefix keys/values start at layer {prefix.start_layer}, the capture at {captured.start_layer}")
    if positions.numel() and int(positions.min()) < start:
        raise ValueError(f"selected positions start at {int(positions.min())}, inside the cached prefix of {start}")
    run_device = next(get_decoder_layers(model)[captured.start_layer].parameters()).device
    source = captured.hidden_states.index_select(0, rows.to(captured.hidden_states.device))
    index = positions.to(source.device).unsqueeze(-1).expand(-1, -1, source.shape[-1])
    hidden = source.gather(1, index).to(run_device)
    cache = _PrefixedKeyValues(prefix) if start > 0 else None
    return _run_layers(model, captured, hidden, rows, start, start + positions.shape[1], cache, positions=positions)


def nll_from_hidden(model: nn.Module, hidden: torch.Tensor, labels: torch.Tensor) -> CompletionNLL:
    """Teacher-forced NLL of labelled tokens, with the LM head applied at those positions only."""
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    row_index, position = mask.nonzero(as_tuple=True)
    token_nll = completion_token_nll(model, hidden, row_index, position, targets[row_index, position])  # t predicts t+1
    total = torch.zeros(labels.shape[0], dtype=token_nll.dtype, device=token_nll.device).index_add(0, row_index, token_nll)
    return CompletionNLL(total, mask.sum(dim=1))


def completion_nll(
    model: nn.Module,
    captured: CapturedInputs,
    updates: Mapping[int, DynamicWeightUpdate],
    multipliers: Any = 1.0,
    rows: Optional[torch.Tensor] = None,
) -> CompletionNLL:
    """NLL of the captured rows' completions under `updates` at `multipliers` (float or one per row).

    Every update must sit at or above the captured start layer.
    """
    below = [layer for layer, update in updates.items()
             if layer < captured.start_layer and (layer + 1 < captured.start_layer or not output_only(update))]
    if below:
        raise ValueError(f"updates at layers {sorted(updates)} lie below the captured start layer {captured.start_layer}"
                         " (only a vector may sit at the layer just below it: it acts on that layer's captured output)")
    rows = torch.arange(len(captured)) if rows is None else rows
    labels = captured.batch.labels.index_select(0, rows.to(captured.batch.labels.device))
    with attach(model, updates, multipliers):
        hidden = replay_hidden(model, captured, rows)
    return nll_from_hidden(model, hidden, labels)


def full_forward_nll(
    model: nn.Module, batch: TokenBatch, updates: Mapping[int, DynamicWeightUpdate], multipliers: Any = 1.0,
    positions: Optional[torch.Tensor] = None, rows: Optional[torch.Tensor] = None,
) -> CompletionNLL:
    """The plain path: a full forward of the whole model (the reference the fast path must equal).

    `rows` selects rows of `batch`, trimmed to the longest of them; `positions` ([rows, seq] of
    that selection) limits where the updates act, as `attach` does.
    """
    if rows is not None:
        rows = rows.to(batch.input_ids.device)
        width = int(batch.attention_mask.index_select(0, rows).sum(dim=1).max())
        batch = batch.select(rows, width)
    with attach(model, updates, multipliers, positions=positions):
        output = model(input_ids=batch.input_ids, attention_mask=batch.model_mask(), use_cache=False,
                       output_hidden_states=False)
    logits = output.logits.float()
    targets = batch.labels[:, 1:]
    mask = targets != IGNORE_INDEX
    log_probs = torch.log_softmax(logits[:, :-1], dim=-1)
    token_nll = -log_probs.gather(-1, targets.clamp_min(0).unsqueeze(-1)).squeeze(-1) * mask
    return CompletionNLL(token_nll.sum(dim=1), mask.sum(dim=1))
