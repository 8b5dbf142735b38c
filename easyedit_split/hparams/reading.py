"""Reading method files: YAML and dict sources, sections, type coercion, aliases and key checks.

Pure configuration code (no torch): a value that does not fit its field's type, or a key no class
knows, fails here with the file, the key and the closest valid key.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
import re
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Union, get_args, get_origin, get_type_hints

import yaml

from ..constants import PathLike
from ..errors import HparamsError, excerpt, suggest

try:  # omegaconf comes with hydra-core; stay usable without it
    from omegaconf import DictConfig, ListConfig, OmegaConf
except ImportError:  # pragma: no cover - hydra is optional
    DictConfig = ListConfig = OmegaConf = None

logger = logging.getLogger(__name__)

SECTION_NAMES = ("generate", "apply")
"""The sections of EasyEdit's merged method files."""


# Keys written differently in EasyEdit's own files: (read as, warn?).
# ``concepts_id`` is a misspelling in EasyEdit's apply files (its classes read
# ``concept_id``); ``torch_dtype`` is the older name of ``dtype`` used by
# EasyEdit's config_merged.yaml and accepted by its model loader.
KEY_ALIASES: Dict[str, tuple] = {
    "concepts_id": ("concept_id", True),
    "torch_dtype": ("dtype", False),
}

# Values written differently in EasyEdit's files: key -> {old value: our value}.
# ``weight`` is EasyEdit's older name of ``local_weight`` (its powerseeking
# files still use it); ``norm`` is SpiltHyperParams' default for ``normal``.
VALUE_ALIASES: Dict[str, Dict[str, str]] = {
    "intervention_method": {"weight": "local_weight"},
    "substraction_type": {"norm": "normal"},
}


MAX_HPARAMS_BYTES = 1 << 20
"""Largest hparams/config file read (1 MiB; EasyEdit's files are under 4 KiB): checked before parsing."""

MAX_YAML_ALIASES = 64
"""Most alias uses (``*name``) in one YAML document: a few anchors are normal, a 'billion laughs'
bomb (aliases of aliases) would expand a small file into gigabytes when copied or printed."""

MAX_INT_KEY = 2**31 - 1
"""Largest integer any key takes (layers, epochs, sizes, ids, seed); larger is a typo or an attack."""


class BoundedSafeLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that refuses more than `MAX_YAML_ALIASES` alias uses (why: alias bombs)."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self.alias_uses = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self.alias_uses += 1
            if self.alias_uses > MAX_YAML_ALIASES:
                event = self.peek_event()
                raise yaml.composer.ComposerError(
                    None, None, f"more than {MAX_YAML_ALIASES} YAML alias uses (*name); write the values out",
                    event.start_mark)
        return super().compose_node(parent, index)


def bounded_safe_load(text: Union[str, bytes], source: str) -> Any:
    """`yaml.safe_load` with the alias bound; a YAML error names `source` and quotes at most a bounded excerpt."""
    try:
        return yaml.load(text, Loader=BoundedSafeLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark is not None else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise HparamsError(f"{where}: malformed YAML: {excerpt(str(problem))[1:-1]}") from None


_NUMBER_RE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


# --------------------------------------------------------------------------- type checking


class Mismatch(Exception):
    """Internal: a value does not fit a type."""


def describe(tp: Any) -> str:
    """Human name of a type hint, for error messages."""
    origin, args = get_origin(tp), get_args(tp)
    if tp is Any:
        return "any"
    if origin is Union:
        parts = [describe(a) for a in args if a is not type(None)]
        text = " or ".join(parts)
        return f"{text} or null" if type(None) in args else text
    if origin in (list, List):
        return f"list of {describe(args[0])}" if args else "list"
    if origin in (dict, Dict):
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def coerce(value: Any, tp: Any) -> Any:
    """Return ``value`` converted to ``tp`` where that is lossless, else raise ``Mismatch``.

    Conversions: int -> float, integral float -> int, numeric strings such as
    ``"1e-4"`` -> float (PyYAML reads ``1e-4`` as a string; EasyEdit converts
    it), tuples -> lists.
    """
    if tp is Any:
        return value
    origin, args = get_origin(tp), get_args(tp)
    if origin is Union:
        if value is None:
            if type(None) in args:
                return None
            raise Mismatch
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg)
            except Mismatch:
                continue
        raise Mismatch
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise Mismatch
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise Mismatch
    if tp is float:
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT_KEY:
            raise Mismatch  # beyond any sensible key (and float() of a 400-digit int overflows)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _NUMBER_RE.match(value.strip()):
            return float(value)
        raise Mismatch
    if tp is str:
        if isinstance(value, str):
            return value
        raise Mismatch
    if origin in (list, List):
        if isinstance(value, (list, tuple)):
            return [coerce(v, args[0]) for v in value] if args else list(value)
        raise Mismatch
    if origin in (dict, Dict):
        if isinstance(value, Mapping):
            return dict(value)
        raise Mismatch
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise Mismatch


_HINTS_CACHE: Dict[type, Dict[str, Any]] = {}


def field_types(cls: type) -> Dict[str, Any]:
    """Resolved type hints of a dataclass's init fields (cached per class)."""
    if cls not in _HINTS_CACHE:
        hints = get_type_hints(cls)
        _HINTS_CACHE[cls] = {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}
    return _HINTS_CACHE[cls]


def check_choice(key: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise HparamsError(
            f"key '{key}': {excerpt(value)} is not one of {', '.join(choices)}{suggest(str(value), choices)}"
        )


def check_min(key: str, value: Any, minimum: float, strict: bool = False) -> None:
    if value is None:
        return
    if (value <= minimum) if strict else (value < minimum):
        relation = "greater than" if strict else "at least"
        raise HparamsError(f"key '{key}': must be {relation} {minimum}, got {excerpt(value)}")


def check_finite_fields(params: Any) -> None:
    """Every float (and list-of-float) field is finite and every integer within +-`MAX_INT_KEY`:
    YAML's `.nan`/`.inf` are numbers to PyYAML, one NaN steering factor or multiplier silently
    turns every output into NaN, and a 40-digit integer ends in an OverflowError deep in torch."""
    for f in dataclasses.fields(params):
        value = getattr(params, f.name)
        values = value if isinstance(value, list) else [value]
        for item in values:
            if isinstance(item, float) and not math.isfinite(item):
                raise HparamsError(f"key '{f.name}': {item!r} is not a finite number")
            if isinstance(item, int) and not isinstance(item, bool) and abs(item) > MAX_INT_KEY:
                raise HparamsError(f"key '{f.name}': {excerpt(item)} is out of range (at most {MAX_INT_KEY})")


def check_unit_interval(key: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise HparamsError(f"key '{key}': a dropout rate must be in [0, 1), got {value!r}")


def keep_known_keys(cls: type, data: Mapping[str, Any]) -> Dict[str, Any]:
    """The entries of ``data`` that are fields of the dataclass ``cls`` (EasyEdit's lenient merge)."""
    valid = field_types(cls)
    return {key: value for key, value in data.items() if key in valid}


def _to_plain(obj: Any) -> Any:
    """OmegaConf containers -> plain dicts/lists; anything else unchanged."""
    if OmegaConf is not None and isinstance(obj, (DictConfig, ListConfig)):
        return OmegaConf.to_container(obj, resolve=True)
    return obj


def yaml_path(path: PathLike) -> Path:
    """EasyEdit accepts a method path without ``.yaml``; so do we."""
    text = os.fspath(path)
    if not text.endswith((".yaml", ".yml")) and not os.path.exists(text):
        text += ".yaml"
    return Path(text)


def _read_yaml(path: PathLike) -> tuple:
    """Read a YAML mapping; errors name the file (and line for syntax errors)."""
    file_path = yaml_path(path)
    source = str(file_path)
    if not file_path.is_file():
        raise HparamsError(f"{source}: hparams file not found")
    size = file_path.stat().st_size
    if size > MAX_HPARAMS_BYTES:
        raise HparamsError(f"{source}: {size} bytes; an hparams file is at most {MAX_HPARAMS_BYTES} bytes")
    try:
        text = file_path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise HparamsError(f"{source}: not UTF-8 text (byte {exc.start}); save the file as UTF-8") from None
    data = bounded_safe_load(text, source)
    if data is None:
        raise HparamsError(f"{source}: the file is empty; it must be a YAML mapping with at least 'alg_name'")
    if not isinstance(data, dict):
        raise HparamsError(f"{source}: expected a YAML mapping of keys to values, got {type(data).__name__}")
    return data, source


def read_source(path_or_dict: Any, source: Optional[str] = None) -> tuple:
    """(plain dict, label for errors) from a path, a dict or an OmegaConf DictConfig."""
    path_or_dict = _to_plain(path_or_dict)
    if isinstance(path_or_dict, Mapping):
        return copy.deepcopy(dict(path_or_dict)), source or "<dict>"
    if isinstance(path_or_dict, (str, os.PathLike)):
        return _read_yaml(path_or_dict)
    raise HparamsError(
        f"expected a YAML path, a dict or an OmegaConf DictConfig, got {type(path_or_dict).__name__}"
    )


def is_sectioned(data: Mapping) -> bool:
    return any(name in data for name in SECTION_NAMES)


def section_of(data: Mapping, name: str, source: str) -> Dict[str, Any]:
    part = data.get(name) or {}
    if not isinstance(part, Mapping):
        raise HparamsError(f"{source}: section '{name}:' must be a mapping of keys to values, got {type(part).__name__}")
    return dict(part)


def resolve_section(data: Mapping, section: str, source: str) -> Dict[str, Any]:
    """Shared keys + the chosen section (section wins), as EasyEdit merges them."""
    shared = {k: v for k, v in data.items() if k not in SECTION_NAMES}
    return {**shared, **section_of(data, section, source)}


def apply_key_aliases(data: Dict[str, Any], valid: Any, source: str) -> Dict[str, Any]:
    """Rename EasyEdit's alternative key spellings to ours (warning for misspellings)."""
    for old, (new, warn) in KEY_ALIASES.items():
        if old not in data or new not in valid:
            continue
        if new in data:
            raise HparamsError(f"{source}: both '{old}' and '{new}' are set; keep only '{new}'")
        if warn:
            logger.warning("%s: key '%s' is a misspelling found in EasyEdit's files; read as '%s'", source, old, new)
        data[new] = data.pop(old)
    return data


def apply_value_aliases(data: Dict[str, Any], source: Optional[str]) -> Dict[str, Any]:
    """Rewrite EasyEdit's alternative value spellings (``weight`` -> ``local_weight``)."""
    for key, table in VALUE_ALIASES.items():
        value = data.get(key)
        if isinstance(value, str) and value in table:
            new = table[value]
            if key == "intervention_method":  # a real misnomer: say so; 'norm' is just a default
                logger.warning("%skey '%s': %r is EasyEdit's old name; read as %r", f"{source}: " if source else "", key, value, new)
            data[key] = new
    return data

