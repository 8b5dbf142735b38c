"""easyedit_split: SPLIT steering and the unified preference-utility analysis for EasyEdit users.

Every steering method here produces one intervention type, a dynamic weight update
``delta(x; m) = m * (x @ dW + db)`` added to a decoder layer's output.

    from easyedit_split import SteerEditor, SteeringInterventions, DynamicWeightUpdate, steer, generate_steered
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# Public names, imported on first use so that `import easyedit_split` stays light.
_EXPORTS = {
    "SteerEditor": "easyedit_split.editor",
    "DynamicWeightUpdate": "easyedit_split.interventions",
    "attach": "easyedit_split.interventions",
    "steer": "easyedit_split.interventions",
    "SteeringInterventions": "easyedit_split.steering",
    "generate_steered": "easyedit_split.generation",
    "GenerationSettings": "easyedit_split.generation",
    "GenerationRecord": "easyedit_split.generation",
    "load_hparams": "easyedit_split.hparams",
    "load_dataset": "easyedit_split.data",
    "PolarityPair": "easyedit_split.data",
    "load_interventions": "easyedit_split.storage",
    "save_interventions": "easyedit_split.storage",
    "load_model_and_tokenizer": "easyedit_split.models",
    "PreferenceUtilityEvaluator": "easyedit_split.evaluation",
    "register_with_easyedit": "easyedit_split.integrations.easyedit",
    # the error types (errors.py), so `except easyedit_split.StorageError` needs no submodule import
    "EasyEditSplitError": "easyedit_split.errors",
    "HparamsError": "easyedit_split.errors",
    "DatasetError": "easyedit_split.errors",
    "StorageError": "easyedit_split.errors",
    "ModelError": "easyedit_split.errors",
    "TrainingError": "easyedit_split.errors",
    "IntegrationError": "easyedit_split.errors",
    "InterventionError": "easyedit_split.errors",
    "MultiplierError": "easyedit_split.errors",
    "LayerError": "easyedit_split.errors",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'easyedit_split' has no attribute '{name}'")
