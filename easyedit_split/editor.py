"""`SteerEditor`: the one-object API — load a model, train or load interventions, generate, evaluate.

    editor = SteerEditor.from_hparams("hparams/sentiment/smollm2-135m-instruct/caa/generate_caa.yaml")
    editor.train("sentiment")
    texts = editor.generate(["How was your weekend?"], multipliers=[0.0, 8.0])
"""
from __future__ import annotations

import dataclasses
import logging
import random
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from .constants import PathLike
from .data import PolarityPair, load_dataset
from .easyedit_layout import dataset_label
from .errors import HparamsError
from .hparams import ApplyHyperParams, HyperParams, TrainHyperParams, load_hparams
from .generation import GenerationSettings, generate_steered, texts_by_multiplier
from .interventions import DynamicWeightUpdate, InterventionHandle, Multiplier, steer
from .models import get_decoder_layers, load_model_and_tokenizer, require_model_name, validate_layers
from .prompts import PromptFormat
from .registry import get_evaluator, get_method
from .producing import train_to_dir
from .steering import SteeringInterventions

logger = logging.getLogger(__name__)

Pairs = Union[str, Path, Sequence[PolarityPair]]


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch so that a run is repeatable."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _layers_of(hparams: HyperParams) -> Optional[list[int]]:
    """The layers a train or apply file names; None for settings without layers (e.g. generation only)."""
    if isinstance(hparams, (TrainHyperParams, ApplyHyperParams)):
        return list(hparams.layers)
    return None


class SteerEditor:
    """Holds a model, its tokenizer, the hparams and the current interventions.

    `hparams` may be omitted to only load and apply saved interventions: the base `HyperParams`
    defaults (the default model, EasyEdit's prompt settings, seed 42) apply. The seed is set once,
    here; methods that train seed themselves from their hparams.
    """

    def __init__(self, hparams: Optional[HyperParams] = None, model: Optional[nn.Module] = None, tokenizer: Any = None,
                 offline: Optional[bool] = None) -> None:
        self.hparams = hparams if hparams is not None else HyperParams()
        if model is None:
            name = require_model_name(self.hparams.model_name_or_path, f"SteerEditor({type(self.hparams).__name__})")
            model, tokenizer = load_model_and_tokenizer(name, self.hparams.dtype, self.hparams.device, offline=offline, override_weights_path=self.hparams.override_model_weights_path)
        elif tokenizer is None:
            raise ValueError("SteerEditor: pass the tokenizer together with the model")
        self.model = model
        self.tokenizer = tokenizer
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.prompt_format = PromptFormat.from_hparams(self.hparams)
        layers = _layers_of(self.hparams)
        if layers is not None:
            validate_layers(layers, len(get_decoder_layers(model)))
        self.interventions: Optional[SteeringInterventions] = None
        set_seed(self.hparams.seed)

    @classmethod
    def from_hparams(
        cls, hparams_or_path: Union[str, Path, HyperParams, Mapping], model: Optional[nn.Module] = None,
        tokenizer: Any = None, offline: Optional[bool] = None, **overrides: Any,
    ) -> "SteerEditor":
        """Build from an hparams object, a dict or an EasyEdit YAML file (train or apply file).

        `overrides` replace keys (e.g. `model_name_or_path`, `device`) after loading. Without a
        `model`, the file or the overrides must name one (EasyEdit's method files leave it to the
        top-level config): otherwise a ModelError names the file. `offline=True` uses the
        Hugging Face cache only (None: follow HF_HUB_OFFLINE).
        """
        if isinstance(hparams_or_path, HyperParams):
            hparams = hparams_or_path
        else:
            hparams = load_hparams(hparams_or_path)
        if overrides:
            hparams = dataclasses.replace(hparams, **overrides)
        if model is None:
            where = str(hparams_or_path) if isinstance(hparams_or_path, (str, Path)) else type(hparams).__name__
            require_model_name(hparams.model_name_or_path, where)
        return cls(hparams, model=model, tokenizer=tokenizer, offline=offline)

    # ------------------------------------------------------------------ state
    @property
    def updates(self) -> SteeringInterventions:
        """The active interventions (`{layer: update}` of the active concept); empty before train/load."""
        return self.interventions if self.interventions is not None else SteeringInterventions({})

    @updates.setter
    def updates(self, value: Mapping[int, DynamicWeightUpdate]) -> None:
        self.interventions = SteeringInterventions.from_trained(value)

    # ------------------------------------------------------------------ data
    def _pairs(self, dataset: Pairs, split: str = "train") -> list[PolarityPair]:
        if isinstance(dataset, (str, Path)):
            return load_dataset(dataset, split=split)
        return list(dataset)

    # ------------------------------------------------------------------ train / load
    def train(
        self,
        dataset: Pairs = "sentiment",
        split: str = "train",
        hparams: Optional[Union[HyperParams, str, Path]] = None,
        save: Optional[bool] = None,
        output_dir: Optional[PathLike] = None,
        dataset_name: Optional[str] = None,
    ) -> SteeringInterventions:
        """Produce interventions with the method named by `alg_name`; they become the active ones.

        Returns a `SteeringInterventions` (`{layer: update}`); for multi-concept data its
        `concepts` holds every concept and the lowest concept id is active.

        Saved (when `save_vectors` is set or `save=True`) in EasyEdit's layout under
        `<steer_vector_output_dir>/<dataset>/<alg>_<method>/layer_<L>.pt`.
        """
        hp = load_hparams(hparams) if isinstance(hparams, (str, Path)) else (hparams or self.hparams)
        if not isinstance(hp, TrainHyperParams):
            raise HparamsError(f"train: {type(hp).__name__} is not a train (generate) file; "
                               "pass hparams= with a generate_<method>.yaml file")
        pairs = self._pairs(dataset, split)
        name = dataset_name or (dataset_label(dataset) if isinstance(dataset, (str, Path)) else "custom")
        validate_layers(list(hp.layers), len(get_decoder_layers(self.model)))
        if save is not None:
            hp = dataclasses.replace(hp, save_vectors=bool(save))
        out_root = output_dir or hp.steer_vector_output_dir
        directory, trained = train_to_dir(hp, pairs, self.model, self.tokenizer, out_root if hp.save_vectors else None, name)
        if directory is not None:
            logger.info("Saved %s interventions to %s", get_method(hp.alg_name).alg_name, directory)
        self.interventions = SteeringInterventions.from_trained(trained)
        return self.interventions

    generate_vectors = train  # EasyEdit's name for the generate step

    def load(self, directory: PathLike, layers: Optional[Sequence[int]] = None, concept_id: int = 0) -> SteeringInterventions:
        """Load saved interventions (this package's or EasyEdit's files); they become the active ones."""
        self.interventions = SteeringInterventions.load(directory, layers, concept_id, model=self.model)
        return self.interventions

    def _active(self, updates: Optional[Mapping[int, DynamicWeightUpdate]]) -> Mapping[int, DynamicWeightUpdate]:
        chosen = updates if updates is not None else self.updates
        if not chosen:
            raise HparamsError("no interventions: call train(...) or load(...) first, or pass updates=")
        return chosen

    @contextmanager
    def steer(
        self, updates: Optional[Mapping[int, DynamicWeightUpdate]] = None, multiplier: Multiplier = 1.0,
        positions: Optional[torch.Tensor] = None,
    ) -> Iterator[InterventionHandle]:
        """`with editor.steer(multiplier=4.0): editor.model(...)` — the model is restored afterwards.

        Same argument order as `interventions.steer(model, updates, multiplier, positions)`, without
        the model; `updates=None` uses the active interventions.
        """
        if isinstance(updates, (int, float, torch.Tensor)):
            raise TypeError("editor.steer(updates, multiplier): the first argument is the interventions (None = the "
                            "active ones); pass the multiplier by name, e.g. editor.steer(multiplier=4.0)")
        with steer(self.model, self._active(updates), multiplier, positions) as handle:
            yield handle

    # ------------------------------------------------------------------ generate
    def generate(
        self,
        prompts: Sequence[str],
        multipliers: Sequence[float] = (0.0, 1.0),
        updates: Optional[Mapping[int, DynamicWeightUpdate]] = None,
        max_new_tokens: int = 40,
        batch_size: int = 16,
        **generation_params: Any,
    ) -> dict[float, list[str]]:
        """Texts for every prompt at every multiplier: {m: [text per prompt]}.

        One `generation.generate_steered` call: all (multiplier, prompt) rows run batched with
        left padding, each row with its own multiplier. Greedy unless `do_sample=True`; other
        keywords are EasyEdit's `generation_params`. For several samples or the complete outputs,
        call `generation.generate_steered` directly.
        """
        settings = GenerationSettings.from_params(generation_params, max_new_tokens=max_new_tokens, batch_size=batch_size)
        records = generate_steered(self.model, self.tokenizer, list(prompts), self._active(updates), list(multipliers),
                                   settings, self.prompt_format)
        texts = texts_by_multiplier(records)
        return {float(m): [text.strip() for text in texts[float(m)]] for m in multipliers}

    # ------------------------------------------------------------------ evaluate
    def evaluate(
        self,
        dataset: Pairs = "sentiment",
        split: str = "test",
        multipliers: Optional[Sequence[float]] = None,
        updates: Optional[Mapping[int, DynamicWeightUpdate]] = None,
        name: Optional[str] = None,
        evaluator: str = "preference_utility",
        generate: bool = False,
        generation_options: Optional[Mapping[str, Any]] = None,
        generation_dir: Optional[PathLike] = None,
        **evaluator_options: Any,
    ) -> Any:
        """Run an evaluator from the registry (default: the preference-utility evaluator); `multipliers`
        None = the form's default sweep (`evaluation.config.form_sweep`), for both halves when `generate=True`.

        `generate=True` also runs the generation-side evaluation (steered generations of the same
        prompts, judged and scored; `generation_options` are `GenerationEvalConfig` fields such as
        ``judge="openai:MODEL"``, ``concept=...``, ``settings=GenerationSettings(...)``; `generation_dir`
        keeps its resumable files) and returns `GenerationAndPreference(preference, generation)`.
        """
        evaluator_class = get_evaluator(evaluator)
        if multipliers is not None:
            evaluator_options["multipliers"] = list(multipliers)
        instance = evaluator_class(self.model, self.tokenizer, prompt_format=self.prompt_format, **evaluator_options)
        method_name = self.hparams.alg_name if isinstance(self.hparams, (TrainHyperParams, ApplyHyperParams)) else "method"
        result = instance.evaluate(self._active(updates), self._pairs(dataset, split), name=name or method_name)
        if not generate:
            return result
        from .generation_eval.evaluator import GenerationAndPreference, GenerationEvaluator

        # None: the sweep the preference half was scored at (its form's default), so both halves line up
        sweep = list(multipliers) if multipliers is not None else list(result.info["multipliers"])
        options = {"multipliers": sweep, **dict(generation_options or {})}
        generation = GenerationEvaluator(self.model, self.tokenizer, prompt_format=self.prompt_format, **options)
        report = generation.evaluate(self._active(updates), self._pairs(dataset, split), name=name or method_name,
                                     out_dir=generation_dir)
        return GenerationAndPreference(result, report)
