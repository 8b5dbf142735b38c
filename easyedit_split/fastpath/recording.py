"""Record what decoder layers receive and return during a forward, and optionally stop it early.

The one way this package reads activations: CAA's mean activations, the inputs the fast path
replays from (`replay.capture_layer_inputs`) and the steered activations the evaluator hands to
its activation hook all come from `record_activations`. Only forward hooks are used (hooks
attached earlier, such as interventions, run first, so recorded outputs are steered outputs);
leaving the `with` block removes them.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional, Sequence

import torch
from torch import nn

from ..models import get_layer

__all__ = ["Recording", "record_activations"]


@dataclass
class Recording:
    """What the recorded layers saw: `outputs[layer]` (the hidden states a layer returns),
    `inputs[layer]` (the hidden states it receives) and `kwargs[layer]` (its other keyword
    arguments: attention mask, rotary embeddings, ...), for the layers and parts asked for."""

    outputs: dict[int, torch.Tensor] = field(default_factory=dict)
    inputs: dict[int, torch.Tensor] = field(default_factory=dict)
    kwargs: dict[int, dict[str, Any]] = field(default_factory=dict)


class _StopForward(Exception):
    """Raised after layer `stop_after` has run (or before `stop_before` runs) and caught by
    `record_activations`: the layers above and the LM head are not computed."""


@contextmanager
def record_activations(
    model: nn.Module,
    layers: Sequence[int],
    stop_after: Optional[int] = None,
    inputs: bool = False,
    outputs: bool = True,
    stop_before: Optional[int] = None,
) -> Iterator[Recording]:
    """`with record_activations(model, [3, 5], stop_after=5) as rec: model(...)`, then `rec.outputs[5]`.

    Records, for every forward run in the block, the outputs (and with `inputs=True` the inputs
    and keyword arguments) of the decoder `layers`; a later forward overwrites an earlier one.
    With `stop_after`, the forward ends once that layer has returned (the block's remaining
    statements are skipped, so run one forward per block); with `stop_before`, it ends once that
    layer has received its inputs (recorded if asked for), before it runs: a capture that needs only
    what a layer receives does not compute that layer. The exception that ends it never leaves
    this context manager. Tensors are kept as the model made them: run under
    `torch.no_grad()` unless gradients are wanted.
    """
    recording = Recording()
    wanted = sorted(set(int(layer) for layer in layers))
    stops = {int(layer) for layer in (stop_after, stop_before) if layer is not None}
    hooked = sorted(set(wanted) | stops)
    modules = {layer: get_layer(model, layer) for layer in hooked}

    def record_input(layer: int):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            if inputs and layer in wanted:
                recording.inputs[layer] = args[0] if args else kwargs["hidden_states"]
                recording.kwargs[layer] = {key: value for key, value in kwargs.items() if key != "hidden_states"}
            if layer == stop_before:
                raise _StopForward

        return hook

    def record_output(layer: int):
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            if outputs and layer in wanted:
                recording.outputs[layer] = output[0] if isinstance(output, tuple) else output
            if layer == stop_after:
                raise _StopForward

        return hook

    handles = []
    try:
        for layer, module in modules.items():
            if (inputs and layer in wanted) or layer == stop_before:
                handles.append(module.register_forward_pre_hook(record_input(layer), with_kwargs=True))
            if (outputs and layer in wanted) or layer == stop_after:
                handles.append(module.register_forward_hook(record_output(layer)))
        yield recording
    except _StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()
