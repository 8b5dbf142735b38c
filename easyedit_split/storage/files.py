"""File primitives every writer and reader of the package uses: nothing half-written, nothing outside
the chosen directory, nothing unpickled, no bare NaN in JSON.

- Atomic writes: a temporary file beside the target, renamed onto it (`atomic_write` and friends).
- Containment and writability: `check_inside`, `check_writable`, checked before any compute.
- Weights-only torch loads: `safe_torch_load` never runs pickled code.
- Strict JSON: Python's `json` writes `NaN` for float('nan') by default, which strict readers
  (JavaScript, jq, most non-Python tools) reject. Undefined numbers (a correlation over constant
  values, a fit without enough points) become `null`, and the enclosing object gets
  `<key>_null_reason` saying what the value was. OmegaConf containers (EasyEdit's top-level values)
  become plain lists/objects instead of their repr.

This module imports torch only inside the two functions that need it, so that configuration code
and `easyedit_layout` can use it cheaply.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..constants import PathLike
from ..errors import StorageError

NULL_REASON_SUFFIX = "_null_reason"


def check_inside(root: PathLike, path: PathLike, what: str) -> Path:
    """`path` if it resolves inside `root`; else an error before anything is written.

    Names taken from data or arguments (a dataset called `../../x`, `some/dir/sub/..`) must not
    move a write out of the output directory the user chose.
    """
    root_resolved, resolved = Path(root).resolve(), Path(path).resolve()
    if resolved == root_resolved or root_resolved not in resolved.parents:
        raise StorageError(f"{path}: {what} would write outside the output directory {root} "
                           f"(resolves to {resolved}); use a plain name without '..' or '/'")
    return Path(path)


def check_writable(path: PathLike, what: str = "output directory") -> Path:
    """Fail now, before any compute, if `path` cannot become a writable directory.

    Walks up to the nearest existing ancestor: a regular file there, or an ancestor this process
    cannot write to, is an error naming it. Nothing is created.
    """
    path = Path(path)
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise StorageError(f"{path}: cannot be the {what}: {probe} is a file, not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise StorageError(f"{path}: cannot be the {what}: {probe} is not writable")
    return path


def file_mode() -> int:
    """The mode a plain `open(..., "w")` would give under the current umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: PathLike, write: Any) -> Path:
    """Run `write(tmp_path)` on a temporary file beside `path`, then rename it onto `path`.

    The file gets the umask's mode (mkstemp alone would make it 0600). A temporary file left by
    a killed process is a hidden `.<name>.<random>.tmp`; loaders ignore it, writers delete it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, file_mode())
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def atomic_torch_save(obj: Any, path: PathLike) -> Path:
    """`torch.save` to a temporary file in the same directory, then rename: never half-written."""
    import torch

    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def atomic_write_text(path: PathLike, text: str) -> Path:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)

    return atomic_write(path, write)


def atomic_write_json(path: PathLike, data: Any) -> Path:
    """Strict JSON (NaN/inf become null with a `<key>_null_reason`; see `finite_json_value`), written atomically."""
    return atomic_write_text(path, json_text(data) + "\n")


def safe_torch_load(path: PathLike) -> Any:
    """Load a steering file without unpickling code; errors name the file."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise StorageError(f"{path}: no such intervention file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"GLOBAL ([\w.]+)", str(error))
        if found:
            raise StorageError(f"{path}: refused: the file carries pickled code or objects ({found.group(1)}), not only "
                               "tensors; intervention files are loaded weights-only, as plain tensors and dicts") from None
        raise StorageError(f"{path}: refused: not a plain weights-only torch file (a pickle with operations other "
                           "than tensors and dicts, which may carry code, or a truncated file)") from None
    except Exception as error:  # truncated zip archives, text files, directories
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise StorageError(f"{path}: not a readable torch file, it may be truncated ({first_line})") from None


def file_sha256(path: PathLike) -> str:
    """The SHA-256 of a file's bytes, read in blocks (manifests record it for every layer file)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ----------------------------------------------------------------------------- strict JSON


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
