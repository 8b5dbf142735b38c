"""Hand-written references the tests compare the library with, written once.

Independent of `easyedit_split` on purpose (imports torch only): a test that compares the library
with these compares two implementations, never the library with itself.

- `hand_steering`: the intervention `h + m * (x @ dW + db)` as a plain PyTorch forward hook on a
  decoder layer (`model.model.layers[i]`): the layer's output hidden state `h` becomes
  `h + delta(x, h)`, with `x` the input of a component module in the same forward. Tests write
  the delta by hand (`m * v`, `m * (x @ A @ B)`, `m * (x @ W + b)`, times a position mask...).
- `SMOLLM2_PREFIX_TEXT` / `SMOLLM2_PREFIX_LENGTH`: the default model's chat-template prefix,
  counted by hand.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Union

import torch

# The default prompt of SmolLM2-135M-Instruct, token by token (counted by hand):
#
#     0-19   <|im_start|> system \n You are a helpful AI assistant named SmolLM , trained by Hugging Face <|im_end|>
#     20-23  \n <|im_start|> user \n                     <- the common prefix ends here: 24 tokens
#
# so the first token of the question is position 24.
SMOLLM2_PREFIX_TEXT = (
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    "<|im_start|>user\n"
)
SMOLLM2_PREFIX_LENGTH = 24

# delta(x, h) -> what is added to h; x is the captured component input (None without a component).
# A tensor stands for a delta that depends on neither.
Delta = Union[torch.Tensor, Callable[[Union[torch.Tensor, None], torch.Tensor], torch.Tensor]]


def _with_hidden(output, hidden: torch.Tensor):
    """The layer's output with its hidden state replaced, in the form the layer returned (tuple or tensor)."""
    return (hidden,) + tuple(output[1:]) if isinstance(output, tuple) else hidden


@contextmanager
def hand_steering(model: torch.nn.Module, deltas: Mapping[int, Delta],
                  inputs_of: Mapping[int, torch.nn.Module] | None = None) -> Iterator[None]:
    """Within the block, decoder layer `i`'s output `h` becomes `h + deltas[i](x, h)`.

    `x` is what `inputs_of[i]` (a module of that layer, e.g. `mlp.down_proj`) received in the same
    forward, positional or as `hidden_states=`. Gradients flow (no `no_grad` here)."""
    captured: dict[int, torch.Tensor] = {}
    handles = []
    try:
        for layer, module in (inputs_of or {}).items():
            def keep_input(mod, args, kwargs, layer=layer):
                captured[layer] = args[0] if args else kwargs["hidden_states"]

            handles.append(module.register_forward_pre_hook(keep_input, with_kwargs=True))
        for layer, delta in deltas.items():
            def add(mod, args, output, layer=layer, delta=delta):
                hidden = output[0] if isinstance(output, tuple) else output
                added = delta(captured.get(layer), hidden) if callable(delta) else delta
                return _with_hidden(output, hidden + added)

            handles.append(model.model.layers[layer].register_forward_hook(add))
        yield
    finally:
        for handle in handles:
            handle.remove()


def hand_logits(model: torch.nn.Module, ids: torch.Tensor, deltas: Mapping[int, Delta],
                inputs_of: Mapping[int, torch.nn.Module] | None = None) -> torch.Tensor:
    """Logits of `model(ids)` under `hand_steering(model, deltas, inputs_of)`, without gradients."""
    with torch.no_grad(), hand_steering(model, deltas, inputs_of):
        return model(ids).logits


def after_position(length: int, first: int) -> torch.Tensor:
    """A `[1, length, 1]` float mask: 1 at positions `>= first`, to multiply a delta by."""
    return (torch.arange(length) >= first).float().view(1, -1, 1)
