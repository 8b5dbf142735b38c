"""The saved directories a command reads, each loaded once, and which model the command runs on.

A directory is read before the model loads (a broken file fails in a second, not after minutes of
loading), and checked against the model once it is there, from what was read: no file is read twice.

The model is the user's flag, else the hparams file's, else the model the saved interventions
record in their metadata.json; never a silent default. EasyEdit's method files leave
`model_name_or_path` to the top-level config, so a file without it must not fall back to the
package's default model (a run on a 135M model instead of gemma-2-9b would look like a result).
The default model is used only where a file or the user names it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Optional, Sequence, Union

if TYPE_CHECKING:  # torch stays out of `easyedit-split --help`
    from torch import nn

    from ..interventions import DynamicWeightUpdate


@dataclass(frozen=True)
class LoadedVectors:
    """One saved directory as read: its updates `{layer: update}` and its metadata.json (empty for EasyEdit's)."""

    directory: Path
    updates: dict[int, "DynamicWeightUpdate"]
    metadata: Mapping[str, Any] = field(default_factory=dict)


def load_vectors(directory: Union[str, Path], layers: Optional[Sequence[int]] = None, concept_id: int = 0,
                 allow_unmanifested: bool = False) -> LoadedVectors:
    """Read `directory` once (`storage.load_interventions`, which checks manifest and payloads); the model check
    comes later, from what this returns (`check_against_model`)."""
    from ..storage.units import load_interventions, read_metadata

    updates = load_interventions(directory, layers=list(layers) if layers is not None else None, concept_id=concept_id,
                                 allow_unmanifested=allow_unmanifested)
    return LoadedVectors(Path(directory), updates, read_metadata(directory))


def check_against_model(loaded: LoadedVectors, model: "nn.Module") -> None:
    """The checks `load_interventions(..., model=model)` makes (metadata, layer range, shapes), on `loaded`."""
    from ..errors import StorageError
    from ..models import num_layers
    from ..easyedit_layout import layer_file
    from ..storage.units import check_model_matches, check_update_fits

    check_model_matches(dict(loaded.metadata), model, str(loaded.directory))
    for layer, update in loaded.updates.items():
        path = layer_file(loaded.directory, layer)
        if not 0 <= int(layer) < num_layers(model):
            raise StorageError(f"{path}: layer {layer} is outside the model's {num_layers(model)} layers")
        check_update_fits(update, model, layer, path)


def recorded_model(metadata: Iterable[Mapping[str, Any]]) -> Optional[str]:
    """The `model` recorded in the first of the directories' `metadata` that names one."""
    for recorded in metadata:
        model = recorded.get("model")
        if model:
            return str(model)
    return None


def choose_model(flag: Optional[str], from_file: Optional[str], loaded: Iterable[LoadedVectors] = (),
                 where: str = "the command") -> str:
    """`flag` > `from_file` > the model `loaded` directories record; a ModelError naming `where` otherwise."""
    from ..models import require_model_name

    return require_model_name(flag or from_file or recorded_model(vectors.metadata for vectors in loaded), where)
