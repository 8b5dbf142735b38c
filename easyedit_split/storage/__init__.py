"""Saving and loading interventions in EasyEdit's on-disk layout (docs/storage.md).

One module per job: `files` (atomic writes, containment, weights-only loads, strict JSON),
`payloads` (an update <-> EasyEdit's `layer_<L>.pt` object), `units` (a saved directory as one unit:
metadata, manifest, lock, resume state, the one writer and the one reader), `staging` (a new unit staged
beside the directory and swapped in; the user's files kept). EasyEdit's names and
places are `easyedit_split.easyedit_layout`. The public API is re-exported here on first use, so
that importing `storage.files` stays free of torch.
"""
from __future__ import annotations

import importlib
from typing import Any

_PUBLIC = {"load_interventions": "easyedit_split.storage.units", "save_interventions": "easyedit_split.storage.units"}
__all__ = list(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'easyedit_split.storage' has no attribute '{name}'")
