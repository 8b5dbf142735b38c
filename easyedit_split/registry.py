"""One table from EasyEdit's `alg_name` to what implements it, and one for evaluators.

Entries are dotted import paths resolved on use, so importing the registry imports no method
and no registry is filled by import-time side effects (a habit of EasyEdit's we avoid).
"""
from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass
from typing import Any, Callable

from .errors import HparamsError


def _resolve(target: str) -> Any:
    module_name, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module_name), attribute)


@dataclass(frozen=True)
class MethodSpec:
    """What implements one `alg_name`: hparams classes, a train function and an apply function.

    `train(hparams, pairs, model, tokenizer, **kwargs) -> {layer: DynamicWeightUpdate}`;
    `apply(model, apply_hparams, load_dir) -> InterventionHandle` is the same for every method,
    because every method produces the same intervention type.
    """

    alg_name: str
    train_hparams: str
    apply_hparams: str
    train: str
    apply: str = "easyedit_split.apply:apply_from_hparams"
    trained: bool = True

    def train_hparams_class(self) -> type:
        return _resolve(self.train_hparams)

    def apply_hparams_class(self) -> type:
        return _resolve(self.apply_hparams)

    def train_function(self) -> Callable[..., Any]:
        return _resolve(self.train)

    def apply_function(self) -> Callable[..., Any]:
        return _resolve(self.apply)


_H = "easyedit_split.hparams"
METHODS: dict[str, MethodSpec] = {
    "caa": MethodSpec("caa", f"{_H}:CAAHyperParams", f"{_H}:ApplyCAAHyperParams", "easyedit_split.methods.caa:train", trained=False),
    "sft": MethodSpec("sft", f"{_H}:SFTHyperParams", f"{_H}:ApplySFTHyperParams", "easyedit_split.methods.sft:train"),
    "reps": MethodSpec("reps", f"{_H}:RePSHyperParams", f"{_H}:ApplyRePSHyperParams", "easyedit_split.methods.reps:train"),
    "split": MethodSpec("split", f"{_H}:SplitHyperParams", f"{_H}:ApplySplitHyperParams", "easyedit_split.methods.split:train"),
}
ALIASES = {"spilt": "split"}  # EasyEdit's spelling

EVALUATORS: dict[str, str] = {
    "preference_utility": "easyedit_split.evaluation:PreferenceUtilityEvaluator",
}


def canonical_name(alg_name: str) -> str:
    name = str(alg_name).strip().lower()
    return ALIASES.get(name, name)


def get_method(alg_name: str) -> MethodSpec:
    """The spec for `alg_name` (`spilt` is accepted for `split`), or an error naming the closest."""
    name = canonical_name(alg_name)
    if name not in METHODS:
        known = sorted(METHODS) + sorted(ALIASES)
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise HparamsError(f"alg_name: unknown method '{alg_name}'; known: {known}.{hint}")
    return METHODS[name]


def get_evaluator(name: str = "preference_utility") -> type:
    if name not in EVALUATORS:
        raise HparamsError(f"evaluator: unknown '{name}'; known: {sorted(EVALUATORS)}")
    return _resolve(EVALUATORS[name])
