"""CAA: the steering vector is the mean over pairs of (activation on matching - on not-matching).

As EasyEdit's CAA (non multiple-choice): the decoder layer's output, averaged over the
completion tokens of each sequence, per layer in `hparams.layers`. No training.
"""
from __future__ import annotations

import logging
from typing import Any, Optional, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from ..data import PolarityPair
from ..interventions import DynamicWeightUpdate
from ..models import check_layer, model_device
from ..prompts import IGNORE_INDEX, PromptFormat, TokenBatch, encode_batch
from ..recording import record_activations

logger = logging.getLogger(__name__)


def mean_completion_activations(
    model: nn.Module, batch: TokenBatch, layers: Sequence[int]
) -> dict[int, torch.Tensor]:
    """Per row, the mean decoder-layer output over the completion tokens: {layer: [batch, hidden]}."""
    # the layers above the deepest requested one and the LM head are not needed
    with torch.no_grad(), record_activations(model, layers, stop_after=max(layers)) as record:
        model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
    outputs = record.outputs
    # Completion positions are where labels are set (prompt and padding are IGNORE_INDEX).
    mask = (batch.labels != IGNORE_INDEX).unsqueeze(-1).float()
    count = mask.sum(dim=1).clamp_min(1.0)
    return {layer: (hidden.float() * mask).sum(dim=1) / count for layer, hidden in outputs.items()}


def compute_caa_vectors(
    model: nn.Module,
    tokenizer: Any,
    pairs: Sequence[PolarityPair],
    layers: Sequence[int],
    prompt_format: Optional[PromptFormat] = None,
    batch_size: int = 8,
    progress: bool = True,
) -> dict[int, torch.Tensor]:
    """Mean difference vectors {layer: [hidden]} over `pairs`."""
    if not pairs:
        raise ValueError("CAA needs at least one polarity pair")
    for layer in layers:
        check_layer(model, layer, source="layers")
    fmt = prompt_format or PromptFormat()
    device = model_device(model)
    totals = {layer: torch.zeros(model.config.hidden_size, dtype=torch.float64) for layer in layers}
    for start in tqdm(range(0, len(pairs), batch_size), desc="CAA activations", disable=not progress):
        chunk = pairs[start : start + batch_size]
        questions = [p.question for p in chunk]
        matching = encode_batch(tokenizer, fmt, questions, [p.matching for p in chunk]).to(device)
        not_matching = encode_batch(tokenizer, fmt, questions, [p.not_matching for p in chunk]).to(device)
        positive = mean_completion_activations(model, matching, layers)
        negative = mean_completion_activations(model, not_matching, layers)
        for layer in layers:
            totals[layer] += (positive[layer] - negative[layer]).sum(dim=0).double().cpu()
    return {layer: (total / len(pairs)).float() for layer, total in totals.items()}


def train(hparams: Any, pairs: Sequence[PolarityPair], model: nn.Module, tokenizer: Any, **_: Any) -> dict[int, DynamicWeightUpdate]:
    """EasyEdit's `caa` generate step: one vector per layer, as `vector` updates."""
    vectors = compute_caa_vectors(
        model, tokenizer, pairs, list(hparams.layers), PromptFormat.from_hparams(hparams),
    )
    return {layer: DynamicWeightUpdate.from_vector(vector) for layer, vector in vectors.items()}
