"""The one method table: `alg_name` -> names, aliases, EasyEdit directory name, hparams classes, train and apply.

Class and function entries are dotted import paths resolved on use: importing the registry imports
no method and no torch, and no registry is filled by import-time side effects (a habit of EasyEdit's
we avoid). The lazy resolution is also what lets `hparams` ask this table for its classes while the
table names classes defined in `hparams` without an import cycle.
"""
from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass
from typing import Any, Callable, Optional

from .constants import ALG_ALIASES, METHOD_NAMES, canonical_alg_name, easyedit_alg_dir_name
from .errors import HparamsError

KINDS = ("train", "apply")


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

    @property
    def aliases(self) -> tuple[str, ...]:
        """Other spellings that select this method (EasyEdit's `spilt` for `split`)."""
        return tuple(alias for alias, canonical in ALG_ALIASES.items() if canonical == self.alg_name)

    @property
    def names(self) -> tuple[str, ...]:
        """Every accepted `alg_name`: the canonical one first."""
        return (self.alg_name, *self.aliases)

    @property
    def easyedit_dir_name(self) -> str:
        """The method part of EasyEdit's directory names (`spilt_lora`, `caa_vector`)."""
        return easyedit_alg_dir_name(self.alg_name)

    def hparams_class(self, kind: str) -> type:
        if kind not in KINDS:
            raise HparamsError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
        return self.train_hparams_class() if kind == "train" else self.apply_hparams_class()

    def train_hparams_class(self) -> type:
        return _resolve(self.train_hparams)

    def apply_hparams_class(self) -> type:
        return _resolve(self.apply_hparams)

    def train_function(self) -> Callable[..., Any]:
        return _resolve(self.train)

    def apply_function(self) -> Callable[..., Any]:
        return _resolve(self.apply)


def _spec(alg_name: str, train_class: str, trained: bool = True) -> MethodSpec:
    hparams = "easyedit_split.hparams.methods"
    return MethodSpec(alg_name, f"{hparams}:{train_class}HyperParams", f"{hparams}:Apply{train_class}HyperParams",
                      f"easyedit_split.methods.{alg_name}:train", trained=trained)


METHODS: dict[str, MethodSpec] = {
    "caa": _spec("caa", "CAA", trained=False),
    "sft": _spec("sft", "SFT"),
    "reps": _spec("reps", "RePS"),
    "split": _spec("split", "Split"),
}
assert tuple(METHODS) == METHOD_NAMES, "the registry lists every method of constants.METHOD_NAMES, in order"

EVALUATORS: dict[str, str] = {
    "preference_utility": "easyedit_split.evaluation.preference_utility:PreferenceUtilityEvaluator",
    "generation_judge": "easyedit_split.generation_eval.evaluator:GenerationEvaluator",
}


def known_names() -> list[str]:
    """Every accepted `alg_name`, canonical names first, then aliases."""
    return list(METHODS) + [alias for spec in METHODS.values() for alias in spec.aliases]


def find_method(alg_name: str) -> Optional[MethodSpec]:
    """The spec for `alg_name`, or None when no method has that name."""
    return METHODS.get(canonical_alg_name(alg_name))


def get_method(alg_name: str) -> MethodSpec:
    """The spec for `alg_name` (`spilt` is accepted for `split`), or an error naming the closest."""
    spec = find_method(alg_name)
    if spec is None:
        known = known_names()
        close = difflib.get_close_matches(canonical_alg_name(alg_name), known, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise HparamsError(f"alg_name: unknown method {alg_name!r}{hint}; known: {', '.join(known)}")
    return spec


def hparams_class(alg_name: str, kind: str) -> type:
    """The train or apply hparams class of `alg_name` (an error naming the closest name when unknown)."""
    return get_method(alg_name).hparams_class(kind)


def find_hparams_class(alg_name: str, kind: str) -> Optional[type]:
    """Like `hparams_class`, but None for an unknown `alg_name`."""
    spec = find_method(alg_name)
    return spec.hparams_class(kind) if spec is not None else None


def hparams_classes(kind: Optional[str] = None) -> list[type]:
    """Every method's hparams classes (train and apply, or only `kind`)."""
    kinds = KINDS if kind is None else (kind,)
    return [spec.hparams_class(k) for spec in METHODS.values() for k in kinds]


def get_evaluator(name: str = "preference_utility") -> type:
    if name not in EVALUATORS:
        raise HparamsError(f"evaluator: unknown '{name}'; known: {sorted(EVALUATORS)}")
    return _resolve(EVALUATORS[name])
