"""The main job: steer the offline default model with CAA and show the text move.

Library code: returns data and logs; the CLI prints.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Optional, Sequence

from .data import load_dataset
from .editor import SteerEditor
from .hparams import CAAHyperParams
from .models import DEFAULT_MODEL_NAME

logger = logging.getLogger(__name__)

DEMO_PROMPTS = ("How was your trip to the city?", "What do you think about Mondays?")
DEMO_LAYER = 15
DEMO_MULTIPLIERS = (-2.0, 0.0, 2.0)


@dataclass
class DemoResult:
    """Generated texts per multiplier for each prompt, and what produced them."""

    prompts: list[str]
    multipliers: list[float]
    texts: dict[float, list[str]]
    layer: int
    n_pairs: int
    vector_norm: float
    extra: dict = field(default_factory=dict)


def run_steering_demo(
    model_name_or_path: str = DEFAULT_MODEL_NAME,
    dataset: str = "sentiment",
    layer: int = DEMO_LAYER,
    multipliers: Sequence[float] = DEMO_MULTIPLIERS,
    prompts: Sequence[str] = DEMO_PROMPTS,
    max_pairs: Optional[int] = 64,
    max_new_tokens: int = 32,
    editor: Optional[SteerEditor] = None,
) -> DemoResult:
    """CAA vector from `dataset` at `layer`, then greedy generation at each multiplier."""
    hparams = CAAHyperParams(layers=[layer], model_name_or_path=model_name_or_path, use_chat_template=True)
    editor = editor or SteerEditor(hparams)
    pairs = load_dataset(dataset, split="train")
    pairs = pairs[:max_pairs] if max_pairs else pairs
    logger.info("CAA on %d %s pairs at layer %d", len(pairs), dataset, layer)
    updates = editor.train(pairs, hparams=hparams, save=False, dataset_name=dataset)
    texts = editor.generate(list(prompts), multipliers=list(multipliers), max_new_tokens=max_new_tokens)
    return DemoResult(list(prompts), [float(m) for m in multipliers], texts, layer, len(pairs),
                      float(updates[layer].bias.detach().norm()))
