"""Parse multiplier sweeps written on a command line: `-2,0,2`, `-8:8:2`, or several of those.

One syntax for every command: comma (or space) separated values and `start:stop:step` ranges
(stop included when the steps land on it; a negative step counts down), in any mix. Pure Python, no torch.
"""
from __future__ import annotations

import math
from typing import Iterable, Union

from .errors import MultiplierError

__all__ = ["parse_multipliers", "MAX_MULTIPLIER", "MAX_SWEEP_POINTS"]

MAX_MULTIPLIER = 1e6
"""Largest |multiplier|: beyond it a steered activation overflows float16/bfloat16 and every score is inf."""
MAX_SWEEP_POINTS = 10_000
"""Most values one sweep holds: `-1e6:1e6:1e-6` would otherwise allocate 2e12 floats before any work."""


def _cut(text: str, limit: int = 200) -> str:
    """At most `limit` characters of the user's text: errors quote a bounded excerpt."""
    return text if len(text) <= limit else text[:limit] + "..."


def _number(text: str, whole: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise MultiplierError(f"multipliers '{whole}': '{_cut(text, 50)}' is not a number or start:stop:step") from None
    if not math.isfinite(value):
        raise MultiplierError(f"multipliers '{whole}': '{_cut(text, 50)}' is not finite; use numbers such as -2 or 0.5")
    if abs(value) > MAX_MULTIPLIER:
        raise MultiplierError(f"multipliers '{whole}': '{_cut(text, 50)}' is out of range (|m| at most {MAX_MULTIPLIER:g})")
    return value


def _range(part: str, whole: str) -> list[float]:
    pieces = part.split(":")
    if len(pieces) != 3:
        raise MultiplierError(f"multipliers '{whole}': '{_cut(part, 50)}' is not start:stop:step (e.g. -8:8:2)")
    start, stop, step = (_number(piece.strip(), whole) for piece in pieces)
    if step == 0 or (stop - start) * step < 0:
        raise MultiplierError(f"multipliers '{whole}': step {step:g} in '{_cut(part, 50)}' never gets from {start:g} to {stop:g}")
    count = int(math.floor((stop - start) / step + 1e-9)) + 1
    if count > MAX_SWEEP_POINTS:
        raise MultiplierError(f"multipliers '{whole}': '{_cut(part, 50)}' has {count} values; a sweep holds at most "
                              f"{MAX_SWEEP_POINTS} (use a larger step)")
    return [round(start + index * step, 10) for index in range(count)]


def parse_multipliers(values: Union[str, Iterable[str]]) -> list[float]:
    """The sorted, distinct multipliers written in `values` (one string or several).

    `"-2,0,2"` -> [-2, 0, 2]; `"-1:1:0.5"` -> [-1, -0.5, 0, 0.5, 1]; `["-4", "0:4:4"]` -> [-4, 0, 4].
    Raises `MultiplierError` for an empty list, a non-number, nan/inf, or a range that never ends.
    """
    texts = [values] if isinstance(values, str) else [str(value) for value in values]
    whole = " ".join(texts)
    whole = _cut(whole)
    found: list[float] = []
    for text in texts:
        for part in text.replace(" ", ",").split(","):
            part = part.strip()
            if not part:
                continue
            found.extend(_range(part, whole) if ":" in part else [_number(part, whole)])
            if len(found) > MAX_SWEEP_POINTS:
                raise MultiplierError(f"multipliers: more than {MAX_SWEEP_POINTS} values; use fewer")
    if not found:
        raise MultiplierError(f"multipliers '{whole}': no values; give e.g. -2,0,2 or -8:8:2")
    return sorted(set(found))
