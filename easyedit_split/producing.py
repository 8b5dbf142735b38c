"""Run the method named by `alg_name` on polarity pairs and save the result in EasyEdit's layout.

One implementation behind `SteerEditor.train`, `examples/run_split.py` and the hydra scripts.
Trained methods save (and resume) through the shared trainer; CAA is saved here, one stacked
row per concept for multi-concept data.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence, Union

from torch import nn

from .data import PolarityPair, group_by_concept
from .hparams import canonical_alg_name
from .models import get_decoder_layers, hidden_size
from .registry import get_method
from .storage import atomic_write_json, intervention_dir, save_concept_update, save_interventions

PathLike = Union[str, Path]


def train_to_dir(hparams: Any, pairs: Sequence[PolarityPair], model: nn.Module, tokenizer: Any,
                 output_root: Optional[PathLike], dataset_name: str) -> tuple[Optional[Path], dict]:
    """Train (or compute) the method named by `hparams.alg_name` and save it in EasyEdit's layout.

    Returns the method directory (`<output_root>/<dataset>/<alg>_<method>`, None when not
    saving) and `{layer: update}` (`{layer: {concept_id: update}}` for multi-concept data).
    """
    spec = get_method(hparams.alg_name)
    method = getattr(hparams, "intervention_method", "vector") if spec.trained else "vector"
    save = bool(getattr(hparams, "save_vectors", True)) and output_root is not None
    directory = intervention_dir(output_root, dataset_name, hparams.alg_name, method) if save else None
    if spec.trained:
        updates = spec.train_function()(hparams, list(pairs), model, tokenizer, output_dir=directory, dataset_name=dataset_name)
        return directory, updates
    groups = group_by_concept(pairs)
    train = spec.train_function()
    meta = {"alg_name": canonical_alg_name(hparams.alg_name), "dataset": dataset_name, "hidden_size": hidden_size(model),
            "num_layers": len(get_decoder_layers(model)), "model": str(getattr(hparams, "model_name_or_path", "")),
            "model_type": getattr(model.config, "model_type", None), "hparams": hparams.to_dict()}
    if len(groups) == 1:
        updates = train(hparams, list(pairs), model, tokenizer)
        if directory is not None:
            save_interventions(directory, updates, meta)
        return directory, updates
    result: dict = {layer: {} for layer in hparams.layers}
    for concept_id, group in groups.items():  # multi-concept CAA: one vector per concept, stacked rows
        for layer, update in train(hparams, group, model, tokenizer).items():
            result[layer][concept_id] = update
            if directory is not None:
                save_concept_update(directory, layer, concept_id, update)
    if directory is not None:
        atomic_write_json(directory / "metadata.json", {**meta, "layers": sorted(result), "concepts": sorted(groups)})
    return directory, result
