"""Hyper-parameters: EasyEdit-compatible method dataclasses, YAML loading and validation.

Every class reads the same YAML keys, with the same defaults, as the matching class in EasyEdit's
``steer/`` package, so EasyEdit's method files (``hparams/Steer/experiment_hparams/spilt_experiment/...``)
load unchanged. Unlike EasyEdit, a key that no class knows is an error naming the file, the key and
the closest valid key, and values are type-checked when a dataclass is built.

A method file is either flat, or has shared keys at the top plus a ``generate:`` and an ``apply:``
section (EasyEdit's merged format). ``TopLevelConfig`` reads EasyEdit's hydra configs.

Modules: ``reading`` (YAML, sections, type coercion, aliases, key checks), ``base``
(``HyperParams``: shared keys, file -> instance), ``methods`` (the method dataclasses), ``loading`` (``load_hparams``: alg_name -> class via the registry), ``top_level``
(``TopLevelConfig``).
"""
from __future__ import annotations

from .base import HyperParams
from .loading import load_hparams
from .methods import (
    PREFERENCE_PAIRS,
    SUBSTRACTION_TYPES,
    ApplyCAAHyperParams,
    ApplyHyperParams,
    ApplyRePSHyperParams,
    ApplySFTHyperParams,
    ApplySplitHyperParams,
    CAAHyperParams,
    GradientTrainHyperParams,
    RePSHyperParams,
    SFTHyperParams,
    SplitHyperParams,
    TrainHyperParams,
)
from .reading import keep_known_keys
from .top_level import TopLevelConfig

__all__ = [
    "SUBSTRACTION_TYPES",
    "PREFERENCE_PAIRS",
    "HyperParams",
    "TrainHyperParams",
    "GradientTrainHyperParams",
    "ApplyHyperParams",
    "CAAHyperParams",
    "SFTHyperParams",
    "RePSHyperParams",
    "SplitHyperParams",
    "ApplyCAAHyperParams",
    "ApplySFTHyperParams",
    "ApplyRePSHyperParams",
    "ApplySplitHyperParams",
    "TopLevelConfig",
    "keep_known_keys",
    "load_hparams",
]
