"""Strict JSON for every file the package writes: no bare NaN/Infinity (not JSON), null with a reason.

Python's `json` writes `NaN` for float('nan') by default, which strict readers (JavaScript, jq, most
non-Python tools) reject. Undefined numbers (a correlation over constant values, a fit without enough
points) become `null`, and the enclosing object gets `<key>_null_reason` saying what the value was.
OmegaConf containers (EasyEdit's top-level values) become plain lists/objects instead of their repr.
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

NULL_REASON_SUFFIX = "_null_reason"


def _reason(value: float) -> str:
    if math.isnan(value):
        return "not a number (NaN): undefined for these inputs"
    return f"infinite ({'+' if value > 0 else '-'}inf): unbounded for these inputs"


def _non_finite(value: Any) -> bool:
    return isinstance(value, float) and not math.isfinite(value)


def _plain(value: Any) -> Any:
    """Containers as dict/list (OmegaConf, tuples, numpy scalars via item()); other objects unchanged."""
    if type(value).__name__ in ("ListConfig", "DictConfig"):
        from omegaconf import OmegaConf

        return OmegaConf.to_container(value, resolve=True)
    if hasattr(value, "item") and getattr(value, "shape", None) == ():
        return value.item()  # numpy scalars, 0-d tensors
    return value


def finite_json_value(value: Any) -> Any:
    """`value` with every non-finite float replaced by None (+ a `<key>_null_reason` beside it in objects)."""
    value = _plain(value)
    if isinstance(value, Mapping):
        out: dict = {}
        reasons: dict[str, str] = {}
        for key, item in value.items():
            item = _plain(item)
            if _non_finite(item):
                out[key] = None
                reasons[f"{key}{NULL_REASON_SUFFIX}"] = _reason(item)
                continue
            out[key] = finite_json_value(item)
            if isinstance(item, (list, tuple)):
                bad = [i for i, element in enumerate(item) if _non_finite(_plain(element))]
                if bad:
                    reasons[f"{key}{NULL_REASON_SUFFIX}"] = (f"elements {bad} were not finite numbers "
                                                             "(NaN or infinite): undefined for these inputs")
        for key, reason in reasons.items():
            out.setdefault(key, reason)
        return out
    if isinstance(value, (list, tuple)):
        return [None if _non_finite(_plain(item)) else finite_json_value(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    return value


def json_text(data: Any, indent: int | None = 2, sort_keys: bool = True, **options: Any) -> str:
    """Strict JSON text of `data` (see `finite_json_value`); objects json cannot encode are written as str()."""
    return json.dumps(finite_json_value(data), indent=indent, sort_keys=sort_keys, allow_nan=False, default=str, **options)
