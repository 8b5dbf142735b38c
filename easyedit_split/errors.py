"""Exception types: every user-facing failure names the file, key or row at fault."""
from __future__ import annotations

import difflib
from typing import Iterable


def suggest(key: str, candidates: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest candidate, or an empty string: the hint error messages end with."""
    match = difflib.get_close_matches(key, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else ""


EXCERPT_CHARS = 200
"""Most characters of a user's input an error message quotes (a hostile input must not make a huge message)."""


def excerpt(value: object, limit: int = EXCERPT_CHARS) -> str:
    """`repr(value)` cut to `limit` characters, saying how much was left out; why: errors quote input, bounded."""
    if isinstance(value, (list, tuple, dict)) and len(value) > limit:  # do not build a huge repr to cut it
        return f"<{type(value).__name__} of {len(value)} items>"
    text = repr(value) if not isinstance(value, str) or len(value) <= limit else repr(value[:limit])
    if isinstance(value, str) and len(value) > limit:
        return f"{text}... ({len(value)} characters)"
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


class EasyEditSplitError(Exception):
    """Base class of the package's errors."""


class HparamsError(EasyEditSplitError, ValueError):
    """A hyper-parameter file or value is malformed (names the file and key)."""


class DatasetError(EasyEditSplitError, ValueError):
    """A dataset file or row is malformed (names the file and row)."""


class StorageError(EasyEditSplitError, ValueError):
    """A saved intervention file is missing, malformed or does not fit the model."""


class ModelError(EasyEditSplitError, ValueError):
    """The model cannot be loaded, or a layer/component does not exist in it."""


class TrainingError(EasyEditSplitError, RuntimeError):
    """Training cannot go on (e.g. a NaN loss); names the step."""


class IntegrationError(EasyEditSplitError, ImportError):
    """An EasyEdit checkout is missing or incomplete; says what to install or set."""


class InterventionError(EasyEditSplitError, ValueError):
    """An intervention cannot be built or applied as asked (unknown form or component, a multiplier
    of the wrong shape, null-it-out on a non-vector update); a saved file's misfit is a `StorageError`."""


class MultiplierError(EasyEditSplitError, ValueError):
    """A multiplier list that cannot be read; the message names the offending part."""


class LayerError(HparamsError, ModelError):
    """A layer index outside the model: a mistake in the hparams and a mismatch with the model."""
