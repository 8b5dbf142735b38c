"""Which model a command runs on: the user's flag, else the hparams file, else the model the saved
interventions record in their metadata.json; never a silent default.

EasyEdit's method files leave `model_name_or_path` to the top-level config, so a file without it
must not fall back to the package's default model (a run on a 135M model instead of gemma-2-9b
would look like a result). The default model is used only where a file or the user names it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional, Union

from .models import require_model_name
from .storage.units import read_metadata


def recorded_model(directories: Iterable[Union[str, Path]]) -> Optional[str]:
    """The `model` recorded in the first of `directories` whose metadata.json names one."""
    for directory in directories:
        model = read_metadata(directory).get("model")
        if model:
            return str(model)
    return None


def choose_model(flag: Optional[str], from_file: Optional[str], vector_dirs: Iterable[Union[str, Path]] = (),
                 where: str = "the command") -> str:
    """`flag` > `from_file` > the interventions' recorded model; a ModelError naming `where` otherwise."""
    return require_model_name(flag or from_file or recorded_model(vector_dirs), where)
