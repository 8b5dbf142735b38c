"""Shared prompt prefixes: their keys and values computed once, each prompt's suffix run on them.

Why: every judge prompt of one rubric starts with the same chat-template header and rubric text (about
three quarters of its tokens in the demo); only the concept, instruction and generated text differ.
Perplexity scores every multiplier's and method's answer to a question after the same prompt
(`generation_eval.text_metrics`). Causal attention makes the keys and values of a prefix independent of
what follows it, so they are computed once (`PrefixKV`) and reused, and only the differing suffix runs
through the model (`last_hidden` for the judge's one position, `suffix_hidden` for every position).

Which prefixes: data-driven, not tied to a rubric's wording. A row reuses the longest common token
prefix it has with a stored entry (cut to that length, since a prefix of a prefix has the prefix's
own keys and values); a row that shares much more with another row of the same call than with any
entry (`plan`) gets that common prefix computed and stored. Shorter than `min_tokens` is not worth a
separate pass.

When it is used: only where it gives the same numbers as the plain forward (within float rounding,
`tests/test_judging_prefix_reuse.py`): the body must take a transformers cache, no forward hook or
pre-hook may sit on the body (a steering hook may depend on positions the suffix pass does not see),
and with a sliding window the rows must fit in it. Stored entries are keyed by the model's state
(identity, dtype, device, every parameter's storage and version counter); a change clears them.
"""
from __future__ import annotations

import inspect
import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional, Sequence

if TYPE_CHECKING:  # torch is imported where it is used: importing `judging` stays light
    import torch
    from torch import nn

logger = logging.getLogger(__name__)

MIN_PREFIX_TOKENS = 16
"""A shared prefix shorter than this runs with the rows (a separate pass would not pay for itself)."""
MAX_ENTRIES = 8
"""Stored prefixes at most (least recently used dropped first); one per rubric in a usual run."""
MAX_STORED_TOKENS = 8192
"""Tokens of all stored prefixes together at most (their keys and values: ~46 KB a token for the default
model, ~57 KB for a 7B bf16 model), least recently used dropped first; a longer prefix is not stored."""


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    """Number of leading tokens `a` and `b` share (bisection on slice equality: compared in C)."""
    a, b = list(a), list(b)
    low, high = 0, min(len(a), len(b))
    while low < high:
        middle = (low + high + 1) // 2
        if a[:middle] == b[:middle]:
            low = middle
        else:
            high = middle - 1
    return low


def _shared_with_others(rows: Sequence[Sequence[int]]) -> list[int]:
    """Per row, the longest prefix it shares with any other row (each side keeping one token to run).

    The longest common prefix with any row is reached at a neighbour in sorted order."""
    order = sorted(range(len(rows)), key=lambda i: list(rows[i]))
    shared = [0] * len(rows)
    for a, b in zip(order, order[1:]):
        length = min(common_prefix_length(rows[a], rows[b]), len(rows[a]) - 1, len(rows[b]) - 1)
        shared[a], shared[b] = max(shared[a], length), max(shared[b], length)
    return shared


def _cache_argument(body: nn.Module) -> Optional[str]:
    """The name under which `body.forward` takes a key/value cache (``cache`` in transformers 5,
    ``past_key_values`` before), or None when it takes none."""
    try:
        parameters = inspect.signature(body.forward).parameters
    except (TypeError, ValueError):
        return None
    for name in ("cache", "past_key_values"):
        if name in parameters:
            return name
    return None


def _model_state(model: nn.Module) -> tuple:
    """What stored keys and values were computed from: the model, its dtype and device, and every
    parameter's storage and in-place version (an optimizer step or ``.data`` swap changes it)."""
    parameters = list(model.parameters())
    first = parameters[0] if parameters else None
    return (id(model), getattr(first, "dtype", None), str(getattr(first, "device", None)),
            hash(tuple((p.data_ptr(), p._version) for p in parameters)))


def _records_only(hook: Any) -> bool:
    """transformers' own output-capturing hook: installed for good on a model's first forward that
    collects hidden states or attentions, it only appends to an active collector and returns None."""
    return (getattr(hook, "__name__", "") == "output_capturing_hook"
            and getattr(hook, "__module__", "") == "transformers.utils.output_capturing")


def _hooked(body: nn.Module) -> bool:
    """Whether any forward hook or pre-hook (module or global) could change what the body computes
    (transformers' recording-only output hooks do not count: they stay on the model once installed)."""
    from torch.nn.modules import module as module_globals

    if getattr(module_globals, "_global_forward_hooks", None) or getattr(module_globals, "_global_forward_pre_hooks", None):
        return True
    return any(m._forward_pre_hooks or any(not _records_only(h) for h in m._forward_hooks.values())
               for m in body.modules())


def _layer_states(cache: Any) -> Optional[list[tuple[torch.Tensor, torch.Tensor]]]:
    """Per layer (keys, values) ``[1, kv_heads, length, head_dim]`` from a transformers cache, or None."""
    import torch

    layers = getattr(cache, "layers", None)
    if not layers:
        return None
    states = []
    for layer in layers:
        keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
        if not isinstance(keys, torch.Tensor) or not isinstance(values, torch.Tensor) or keys.dim() != 4:
            return None
        states.append((keys, values))
    return states


@dataclass
class _Group:
    entry: tuple[int, ...]
    length: int
    rows: list[int]


class PrefixKV:
    """Stored keys and values of shared prefixes for one model (see the module docstring)."""

    def __init__(self, min_tokens: int = MIN_PREFIX_TOKENS, max_entries: int = MAX_ENTRIES,
                 max_tokens: int = MAX_STORED_TOKENS):
        if min_tokens < 1 or max_entries < 1 or max_tokens < min_tokens:
            raise ValueError(f"PrefixKV: min_tokens and max_entries must be >= 1 and max_tokens >= min_tokens, "
                             f"got {min_tokens}, {max_entries}, {max_tokens}")
        self.min_tokens = min_tokens
        self.max_entries = max_entries
        self.max_tokens = max_tokens
        self._entries: "OrderedDict[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]]" = OrderedDict()
        self._state: Optional[tuple] = None
        self.prefix_tokens_run = 0   # tokens run through the body to build entries (tests and benchmarks read these)
        self.suffix_tokens_run = 0   # tokens run through the body on top of entries, padding included

    def clear(self) -> None:
        self._entries.clear()

    def usable(self, model: nn.Module, body: nn.Module, rows: Sequence[Sequence[int]]) -> Optional[str]:
        """The body's cache argument when the prefix path is exact for `rows`, else None (plain forward)."""
        argument = _cache_argument(body)
        if argument is None or _hooked(body):
            return None
        config = getattr(model, "config", None)
        window = getattr(config, "sliding_window", None)
        if window and max(len(row) for row in rows) > int(window):
            return None
        state = _model_state(model)
        if state != self._state:
            self._entries.clear()
            self._state = state
        return argument

    def _best_entry(self, row: Sequence[int]) -> tuple[Optional[tuple[int, ...]], int]:
        best, length = None, 0
        for key in self._entries:
            shared = min(common_prefix_length(key, row), len(row) - 1)  # leave one token to run
            if shared > length:
                best, length = key, shared
        return best, length

    def _store(self, body: nn.Module, argument: str, prefix: tuple[int, ...], device: torch.device) -> bool:
        import torch

        if len(prefix) > self.max_tokens:
            return False
        with torch.no_grad():
            output = body(input_ids=torch.tensor([list(prefix)], device=device), use_cache=True)
        cache = getattr(output, "cache", None) or getattr(output, "past_key_values", None)
        states = _layer_states(cache)
        if states is None or any(keys.shape[-2] != len(prefix) for keys, _ in states):
            return False
        self.prefix_tokens_run += len(prefix)
        self._entries[prefix] = [(keys.detach(), values.detach()) for keys, values in states]
        while len(self._entries) > self.max_entries or sum(map(len, self._entries)) > self.max_tokens:
            self._entries.popitem(last=False)
        return True

    def plan(self, body: nn.Module, argument: str, rows: Sequence[Sequence[int]],
             device: torch.device) -> tuple[list[_Group], list[int]]:
        """Rows grouped by the stored prefix they run on, and the rows left for the plain forward.

        A row whose best stored entry covers less than three quarters of what it shares with another
        row of this call gets that longer prefix stored: each rubric gets its own entry (not only the
        chat header all rubrics share), while a few more shared tokens (the same instruction, the same
        first words of two generations) do not pay for another prefix pass.
        """
        best = [self._best_entry(row) for row in rows]
        shared = _shared_with_others(rows)
        for index, row in enumerate(rows):
            length = best[index][1]
            if shared[index] < self.min_tokens or 4 * (shared[index] - length) < shared[index]:
                continue
            if not self._store(body, argument, tuple(row[:shared[index]]), device):
                continue
            best = [self._best_entry(one) for one in rows]
        groups: dict[tuple[int, ...], _Group] = {}
        plain: list[int] = []
        for index, (key, length) in enumerate(best):
            if key is None or length < self.min_tokens:
                plain.append(index)
                continue
            group = groups.setdefault(key, _Group(key, length, []))
            group.length = min(group.length, length)
            group.rows.append(index)
        for group in groups.values():
            self._entries.move_to_end(group.entry)
        return list(groups.values()), plain

    def suffix_hidden(self, body: nn.Module, argument: str, group: _Group, rows: Sequence[Sequence[int]],
                      pad_id: int, device: torch.device) -> torch.Tensor:
        """Hidden states ``[len(rows), width, hidden]`` of each row's tokens after the group's prefix
        (row `i`'s token `group.length + j` at `[i, j]`), right-padded to the longest suffix (causal
        attention: padding after a row's end cannot reach its tokens), run on the stored keys and values."""
        import torch
        from transformers import DynamicCache

        length = group.length
        suffixes = [list(row[length:]) for row in rows]
        width = max(len(s) for s in suffixes)
        n = len(rows)
        input_ids = torch.tensor([s + [pad_id] * (width - len(s)) for s in suffixes], device=device)
        positions = torch.arange(length, length + width, device=device).unsqueeze(0).expand(n, -1)
        states = [(keys[:, :, :length].expand(n, -1, -1, -1), values[:, :, :length].expand(n, -1, -1, -1))
                  for keys, values in self._entries[group.entry]]
        cache = DynamicCache(states)
        with torch.no_grad():
            hidden = body(input_ids=input_ids, position_ids=positions, use_cache=True,
                          **{argument: cache}).last_hidden_state
        self.suffix_tokens_run += n * width
        return hidden

    def last_hidden(self, body: nn.Module, argument: str, group: _Group, rows: Sequence[Sequence[int]],
                    pad_id: int, device: torch.device) -> torch.Tensor:
        """Each row's last hidden state ``[len(rows), hidden]`` (`suffix_hidden` at each row's end)."""
        import torch

        hidden = self.suffix_hidden(body, argument, group, rows, pad_id, device)
        last = torch.tensor([len(row) - group.length - 1 for row in rows], device=device)
        return hidden[torch.arange(len(rows), device=device), last]
