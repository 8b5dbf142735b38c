"""``load_hparams``: read a method file and build the class its ``alg_name`` selects in the registry."""
from __future__ import annotations

from typing import Any, Mapping, Optional

from .. import registry
from ..errors import HparamsError
from .base import HyperParams
from .reading import SECTION_NAMES, is_sectioned, read_source, section_of


def _resolve_kind(section: Optional[str], kind: Optional[str], data: Mapping, source: str) -> tuple:
    """(kind, section) from the arguments and the file's contents."""
    if section is not None and section not in SECTION_NAMES:
        raise HparamsError(f"section must be 'generate' or 'apply', got {section!r}")
    if kind is not None and kind not in ("train", "apply"):
        raise HparamsError(f"kind must be 'train' or 'apply', got {kind!r}")
    section_kind = {"generate": "train", "apply": "apply", None: None}[section]
    if kind and section_kind and kind != section_kind:
        raise HparamsError(f"kind={kind!r} contradicts section={section!r}")
    kind = kind or section_kind
    if is_sectioned(data):
        if kind is None:
            raise HparamsError(
                f"{source}: the file has 'generate:'/'apply:' sections; pass kind='train' or kind='apply' "
                "(or section='generate'/'apply') to say which to load"
            )
        section = section or ("generate" if kind == "train" else "apply")
    elif kind is None:
        kind = "apply" if "multipliers" in data else "train"
    return kind, section


def load_hparams(
    path_or_dict: Any,
    section: Optional[str] = None,
    *,
    kind: Optional[str] = None,
    source: Optional[str] = None,
) -> HyperParams:
    """Load a method file and return the class its ``alg_name`` selects.

    ``kind`` ("train" or "apply") picks the table; without it a flat file is
    an apply file when it has a ``multipliers`` key. ``section`` ("generate"
    or "apply") picks the part of a sectioned file and implies the kind.
    """
    data, label = read_source(path_or_dict, source)
    if "alg_name" not in data and ("steer_train_hparam_paths" in data or "apply_steer_hparam_paths" in data):
        raise HparamsError(f"{label}: this is a top-level config; load it with TopLevelConfig.from_hparams()")
    kind, section = _resolve_kind(section, kind, data, label)
    alg_name = data.get("alg_name")
    if section is not None:
        alg_name = section_of(data, section, label).get("alg_name", alg_name)
    if alg_name is None:
        raise HparamsError(
            f"{label}: no 'alg_name' key; add one of {', '.join(registry.known_names())} (e.g. 'alg_name: split')"
        )
    try:
        cls = registry.hparams_class(str(alg_name), kind)
    except HparamsError as exc:
        raise HparamsError(f"{label}: {exc} (in a {kind} file)") from None
    return cls._from_data(data, label, section)
