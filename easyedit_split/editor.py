"""`SteerEditor`: the one-object API — load a model, train or load interventions, generate, evaluate.

    editor = SteerEditor.from_hparams("hparams/smollm2-135m-instruct/sentiment/caa/generate_caa.yaml")
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

from .data import PolarityPair, load_dataset
from .errors import HparamsError
from .hparams import HyperParams, load_hparams
from .interventions import DynamicWeightUpdate, attach, steer
from .models import get_decoder_layers, load_model_and_tokenizer, model_device, validate_layers
from .prompts import PromptFormat, steered_prompt_positions
from .registry import get_evaluator, get_method
from .producing import train_to_dir
from .storage import load_interventions

logger = logging.getLogger(__name__)

Pairs = Union[str, Path, Sequence[PolarityPair]]


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch so that a run is repeatable."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def hparams_to_dict(hparams: Any) -> dict:
    if hasattr(hparams, "to_dict"):
        return hparams.to_dict()
    return dataclasses.asdict(hparams) if dataclasses.is_dataclass(hparams) else dict(vars(hparams))


class SteerEditor:
    """Holds a model, its tokenizer, the hparams and the current interventions ({layer: update})."""

    def __init__(self, hparams: HyperParams, model: Optional[nn.Module] = None, tokenizer: Any = None) -> None:
        self.hparams = hparams
        if model is None:
            model, tokenizer = load_model_and_tokenizer(
                getattr(hparams, "model_name_or_path", None), getattr(hparams, "dtype", "float32"),
                getattr(hparams, "device", "cpu"),
            )
        elif tokenizer is None:
            raise ValueError("SteerEditor: pass the tokenizer together with the model")
        self.model = model
        self.tokenizer = tokenizer
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.prompt_format = PromptFormat.from_hparams(hparams)
        layers = getattr(hparams, "layers", None)
        if layers is not None:
            validate_layers(list(layers), len(get_decoder_layers(model)), source=getattr(hparams, "_source", None))
        self.updates: dict[int, DynamicWeightUpdate] = {}
        self.concept_updates: dict[int, dict[int, DynamicWeightUpdate]] = {}
        set_seed(int(getattr(hparams, "seed", 42)))

    @classmethod
    def from_hparams(
        cls, hparams_or_path: Union[str, Path, HyperParams, Mapping], model: Optional[nn.Module] = None,
        tokenizer: Any = None, **overrides: Any,
    ) -> "SteerEditor":
        """Build from an hparams object, a dict or an EasyEdit YAML file (train or apply file).

        `overrides` replace keys (e.g. `model_name_or_path`, `device`) after loading.
        """
        if isinstance(hparams_or_path, HyperParams):
            hparams = hparams_or_path
        else:
            hparams = load_hparams(hparams_or_path)
        if overrides:
            hparams = dataclasses.replace(hparams, **overrides)
        return cls(hparams, model=model, tokenizer=tokenizer)

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
        output_dir: Optional[Union[str, Path]] = None,
        dataset_name: Optional[str] = None,
    ) -> dict[int, DynamicWeightUpdate]:
        """Produce interventions with the method named by `alg_name`; they become the active ones.

        Returns `{layer: update}`, or `{layer: {concept_id: update}}` for multi-concept data
        (then `concept_updates` holds them all and the lowest concept id is active).

        Saved (when `save_vectors` is set or `save=True`) in EasyEdit's layout under
        `<steer_vector_output_dir>/<dataset>/<alg>_<method>/layer_<L>.pt`.
        """
        hp = load_hparams(hparams) if isinstance(hparams, (str, Path)) else (hparams or self.hparams)
        pairs = self._pairs(dataset, split)
        name = dataset_name or (Path(str(dataset)).stem if isinstance(dataset, (str, Path)) else "custom")
        validate_layers(list(hp.layers), len(get_decoder_layers(self.model)), source=getattr(hp, "_source", None))
        set_seed(int(getattr(hp, "seed", 42)))
        if save is not None:
            hp = dataclasses.replace(hp, save_vectors=bool(save))
        out_root = output_dir or getattr(hp, "steer_vector_output_dir", None)
        directory, trained = train_to_dir(hp, pairs, self.model, self.tokenizer, out_root if getattr(hp, "save_vectors", False) else None, name)
        if directory is not None:
            logger.info("Saved %s interventions to %s", get_method(hp.alg_name).alg_name, directory)
        self.concept_updates = {}
        updates = trained
        if trained and all(isinstance(v, dict) for v in trained.values()):
            # multi-concept data: {layer: {concept_id: update}}; the lowest concept becomes active
            self.concept_updates = trained
            updates = {layer: per_concept[min(per_concept)] for layer, per_concept in trained.items()}
        self.updates = updates
        return trained

    generate_vectors = train  # EasyEdit's name for the generate step

    def load(self, directory: Union[str, Path], layers: Optional[Sequence[int]] = None, concept_id: int = 0) -> dict[int, DynamicWeightUpdate]:
        """Load saved interventions (this package's or EasyEdit's files); they become the active ones."""
        self.updates = load_interventions(directory, list(layers) if layers is not None else None, concept_id, model=self.model)
        return self.updates

    def _active(self, updates: Optional[Mapping[int, DynamicWeightUpdate]]) -> dict[int, DynamicWeightUpdate]:
        chosen = dict(updates) if updates is not None else self.updates
        if not chosen:
            raise HparamsError("no interventions: call train(...) or load(...) first, or pass updates=")
        return chosen

    @contextmanager
    def steer(self, multiplier: float = 1.0, updates: Optional[Mapping[int, DynamicWeightUpdate]] = None) -> Iterator[Any]:
        """`with editor.steer(4.0): editor.model(...)` — the model is restored afterwards."""
        with steer(self.model, self._active(updates), multiplier) as handle:
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

        All (multiplier, prompt) rows run batched with left padding; each row carries its own
        multiplier, so a sweep costs one generate call per batch. Greedy unless `do_sample=True`.
        """
        active = self._active(updates)
        rows = [(float(m), prompt) for m in multipliers for prompt in prompts]
        texts: dict[float, list[str]] = {float(m): [] for m in multipliers}
        generation_params.setdefault("do_sample", False)
        if not generation_params["do_sample"]:
            for key in ("temperature", "top_p", "top_k"):
                generation_params.pop(key, None)
        device = model_device(self.model)
        padding_side = self.tokenizer.padding_side
        self.tokenizer.padding_side = "left"  # generation continues from the last real token
        try:
            with attach(self.model, active, 0.0) as handle:
                for start in range(0, len(rows), batch_size):
                    chunk = rows[start : start + batch_size]
                    rendered = [self.prompt_format.prompt_text(self.tokenizer, prompt) for _, prompt in chunk]
                    encoded = self.tokenizer(
                        rendered, return_tensors="pt", padding=True,
                        add_special_tokens=not self.prompt_format.uses_template(self.tokenizer),
                    ).to(device)
                    handle.multiplier = torch.tensor([m for m, _ in chunk])
                    handle.positions = steered_prompt_positions(self.tokenizer, self.prompt_format, encoded["attention_mask"])
                    with torch.no_grad():
                        output = self.model.generate(
                            **encoded, max_new_tokens=max_new_tokens, pad_token_id=self.tokenizer.pad_token_id,
                            **generation_params,
                        )
                    new_tokens = output[:, encoded["input_ids"].shape[1] :]
                    for (m, _), ids in zip(chunk, new_tokens):
                        texts[m].append(self.tokenizer.decode(ids, skip_special_tokens=True).strip())
        finally:
            self.tokenizer.padding_side = padding_side
        return texts

    # ------------------------------------------------------------------ evaluate
    def evaluate(
        self,
        dataset: Pairs = "sentiment",
        split: str = "test",
        multipliers: Sequence[float] = (-8, -4, -2, 0, 2, 4, 8),
        updates: Optional[Mapping[int, DynamicWeightUpdate]] = None,
        name: Optional[str] = None,
        evaluator: str = "preference_utility",
        **evaluator_options: Any,
    ) -> Any:
        """Run an evaluator from the registry (default: the preference-utility evaluator)."""
        evaluator_class = get_evaluator(evaluator)
        instance = evaluator_class(
            self.model, self.tokenizer, prompt_format=self.prompt_format, multipliers=list(multipliers), **evaluator_options
        )
        return instance.evaluate(self._active(updates), self._pairs(dataset, split), name=name or getattr(self.hparams, "alg_name", "method"))
