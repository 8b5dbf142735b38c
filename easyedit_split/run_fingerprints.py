"""Fingerprints of what a resumed run's earlier output was made from, and the named differences.

A resume (a multi-concept training run, a generation-side run) keeps output an earlier process
wrote. That output is honest only if everything that changes it is the same now: the settings,
the data, the model's weights, dtype and device type, the tokenizer and the code. Each resume
records a JSON fingerprint of those inputs beside its output and compares it on the next start;
`differences` lists the dotted keys that differ so the refusal can name them.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping, Optional

from torch import nn

from . import __version__

__all__ = ["json_ready", "model_identity", "tokenizer_identity", "versions", "differences", "describe_differences"]


def json_ready(value: Any) -> Any:
    """`value` as plain JSON values (tuples as lists, anything else as its string)."""
    return json.loads(json.dumps(value, default=str, sort_keys=True))


def versions() -> dict:
    """The code a run's output depends on: this package's, torch's and transformers' versions."""
    import torch
    import transformers

    return {"package": __version__, "torch": torch.__version__, "transformers": transformers.__version__}


def tokenizer_identity(tokenizer: Any) -> dict:
    """The tokenizer's class, a SHA-256 of its vocabulary and of its chat template (token ids depend on them)."""
    if tokenizer is None:
        return {}
    vocab = None
    get_vocab = getattr(tokenizer, "get_vocab", None)
    if callable(get_vocab):
        try:
            vocab = hashlib.sha256(json.dumps(sorted(get_vocab().items())).encode()).hexdigest()
        except Exception:  # a tokenizer without a listable vocabulary: class and template only
            vocab = None
    template = getattr(tokenizer, "chat_template", None)
    return {"class": type(tokenizer).__name__, "vocab_sha256": vocab,
            "chat_template_sha256": hashlib.sha256(str(template).encode()).hexdigest() if template else None}


def model_identity(model: nn.Module, tokenizer: Any = None) -> dict:
    """The model's content, not its name: a SHA-256 of every parameter and buffer, its dtype, device
    type and architecture, and the tokenizer's identity."""
    from .fastpath.capture_cache import weights_digest

    first = next(model.parameters())
    config = getattr(model, "config", None)
    return {"weights_sha256": weights_digest(model), "dtype": str(first.dtype).replace("torch.", ""),
            "device_type": first.device.type, "model_type": getattr(config, "model_type", None),
            "tokenizer": tokenizer_identity(tokenizer)}


def differences(before: Any, now: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two fingerprints (a key on one side only differs too)."""
    if isinstance(before, Mapping) and isinstance(now, Mapping):
        out: list[str] = []
        for key in sorted(set(before) | set(now), key=str):
            out += differences(before.get(key), now.get(key), f"{prefix}.{key}" if prefix else str(key))
        return out
    return [] if before == now else [prefix or "(everything)"]


def _at(value: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return value


def describe_differences(before: Mapping, now: Mapping, limit: int = 8) -> str:
    """``key: earlier -> now`` for the first `limit` differing keys (values cut to 60 characters)."""
    keys = differences(before, now)

    def short(value: Optional[Any]) -> str:
        text = json.dumps(value, default=str)
        return text if len(text) <= 60 else text[:57] + "..."

    shown = [f"{key}: {short(_at(before, key))} -> {short(_at(now, key))}" for key in keys[:limit]]
    more = f"; and {len(keys) - limit} more" if len(keys) > limit else ""
    return "; ".join(shown) + more
