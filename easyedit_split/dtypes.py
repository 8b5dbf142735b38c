"""Weight dtype names: EasyEdit's spellings, their canonical names and the torch dtypes they mean.

One low module that both the configuration (`hparams`, which checks `dtype` keys and must not
import torch) and the model loader (`models`) use, so neither imports the other for it. Torch is
imported inside `resolve_dtype` only, the one function that needs it.
"""
from __future__ import annotations

from typing import Any, Dict

from .errors import HparamsError, suggest

DTYPE_NAMES: Dict[str, str] = {
    "fp32": "float32", "float32": "float32", "float": "float32", "torch.float32": "float32",
    "fp16": "float16", "float16": "float16", "half": "float16", "torch.float16": "float16",
    "bf16": "bfloat16", "bfloat16": "bfloat16", "torch.bfloat16": "bfloat16",
    "fp64": "float64", "float64": "float64", "double": "float64", "torch.float64": "float64",
    "auto": "auto",
}
"""Every accepted spelling (lower case) -> its canonical name."""


def canonical_dtype_name(name: Any) -> str:
    """EasyEdit's dtype spellings (``fp16``, ``half``, ``torch.bfloat16``, ...) -> ``float16``, ``bfloat16``, ``auto``.

    ``torch.dtype`` objects are read by their name, so configuration code calling this needs no torch;
    `resolve_dtype` turns the name into the torch dtype.
    """
    if name is not None and not isinstance(name, str) and type(name).__name__ == "dtype":
        name = str(name)
    if not isinstance(name, str):
        raise HparamsError(f"dtype: expected a dtype name such as 'float32', got {type(name).__name__} ({name!r})")
    canonical = DTYPE_NAMES.get(name.strip().lower())
    if canonical is None:
        short = sorted(key for key in DTYPE_NAMES if not key.startswith("torch."))
        raise HparamsError(f"dtype {name!r} is not known{suggest(name, DTYPE_NAMES)}; use one of {', '.join(short)}")
    return canonical


def resolve_dtype(name: Any) -> Any:
    """Turn an EasyEdit dtype name into a `torch.dtype`.

    Accepts `fp32/float32`, `fp16/float16/half`, `bf16/bfloat16`, `fp64/float64`, `torch.dtype`
    objects and None (float32, EasyEdit's fallback). `"auto"` stays the string `"auto"`, which
    `from_pretrained(dtype=...)` understands (there is no torch dtype for it).
    """
    import torch  # here, not at the top: `hparams` imports this module and stays free of torch

    if name is None:
        return torch.float32
    if isinstance(name, torch.dtype):
        return name
    canonical = canonical_dtype_name(name)
    return canonical if canonical == "auto" else getattr(torch, canonical)
