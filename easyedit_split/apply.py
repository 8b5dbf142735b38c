"""EasyEdit's apply step, written once for every method: load saved updates and hook them in."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

from torch import nn

from .constants import canonical_alg_name
from .errors import HparamsError
from .hparams import ApplyHyperParams
from .interventions import DynamicWeightUpdate, InterventionHandle, attach
from .storage.units import load_interventions


def per_layer_multipliers(layers: list[int], multipliers: list[float], source: str = "apply hparams") -> dict[int, float]:
    """EasyEdit pairs `layers` and `multipliers` position by position; one multiplier serves all layers."""
    if len(multipliers) == 1:
        return {layer: float(multipliers[0]) for layer in layers}
    if len(multipliers) != len(layers):
        raise HparamsError(
            f"{source}: 'multipliers' has {len(multipliers)} values for {len(layers)} layers; give one per layer or a single one"
        )
    return {layer: float(m) for layer, m in zip(layers, multipliers)}


def scaled_updates(updates: dict[int, DynamicWeightUpdate], multipliers: dict[int, float]) -> dict[int, DynamicWeightUpdate]:
    """Fold per-layer multipliers into the updates, so one handle multiplier (1.0) drives them all."""
    return {layer: update.scaled(multipliers[layer]) for layer, update in updates.items()}


def load_for_apply(model: nn.Module, apply_hparams: ApplyHyperParams,
                   load_dir: Optional[Union[str, Path]] = None) -> dict[int, DynamicWeightUpdate]:
    """The saved updates named by `apply_hparams`, each scaled by its layer's multiplier."""
    directory = load_dir or apply_hparams.steer_vector_load_dir
    if not directory:
        raise HparamsError("apply hparams: 'steer_vector_load_dir' is not set and no load directory was given")
    layers = list(apply_hparams.layers)
    # CAA files are always vectors; the other methods' files are read as the hparams' intervention_method
    method = None if canonical_alg_name(apply_hparams.alg_name) == "caa" else apply_hparams.intervention_method
    updates = load_interventions(directory, layers=layers, concept_id=apply_hparams.concept_id, model=model,
                                 intervention_method=method)
    multipliers = per_layer_multipliers(layers, list(apply_hparams.multipliers))
    return scaled_updates(updates, multipliers)


def apply_from_hparams(model: nn.Module, apply_hparams: ApplyHyperParams, load_dir: Optional[Union[str, Path]] = None) -> InterventionHandle:
    """Attach the saved updates named by `apply_hparams` (layers, multipliers, concept_id)."""
    return attach(model, load_for_apply(model, apply_hparams, load_dir), 1.0)
