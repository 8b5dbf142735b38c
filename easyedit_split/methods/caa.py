"""CAA: the steering vector is the mean over pairs of (activation on matching - on not-matching).

As EasyEdit's CAA (non multiple-choice): the decoder layer's output, averaged over the
completion positions of each sequence, per layer in `hparams.layers`. No training.
Which positions count is `caa_token_set` (docs/conventions.md):

- `easyedit` (EasyEdit's rule, the default for its files): the prompt text (question stripped,
  as EasyEdit) and `" " + completion` are tokenized TOGETHER, and the positions from the prompt's own token
  count on are averaged; no end-of-turn suffix. The completion is as `completion_join` places
  it (EasyEdit: as stored, so psychopathy's `" Yes"` becomes `"  Yes"`).
- `completion_and_suffix`: the completion tokens as training and scoring see them
  (`prompts.encode_completion`: `completion_join`, then the end-of-turn suffix). These are the
  trainers' rows, so CAA takes them from `capture_cache` (each pair packed as prompt + both
  completions, the layers below the lowest CAA layer run once) and the SFT or SPLIT run that
  follows on the same data and layer reuses that capture instead of making its own.

`multiple_choice: true` (EasyEdit's multiple-choice reading, only with `caa_token_set: easyedit`):
the prompt text and `"\nAnswer: " + completion` are tokenized together and each side's activation is
the one at the second-to-last token (the answer letter of a completion like `"(A)"`), not a mean.
"""
from __future__ import annotations

import logging
from typing import Any, Optional, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from ..constants import CAA_TOKEN_SETS
from ..data import PolarityPair
from ..fastpath import capture_cache
from ..fastpath.packing import build_layout, capture_template, pair_batch, pairs_from_batch
from ..fastpath.recording import record_activations
from ..fastpath.replay import replay_outputs
from ..interventions import DynamicWeightUpdate
from ..models import check_layer, model_device
from ..prompts import IGNORE_INDEX, EncodedCompletion, PromptFormat, TokenBatch, collate, encode_batch

logger = logging.getLogger(__name__)


def mean_completion_activations(
    model: nn.Module, batch: TokenBatch, layers: Sequence[int]
) -> dict[int, torch.Tensor]:
    """Per row, the mean decoder-layer output over the labelled positions: {layer: [batch, hidden]}."""
    # the layers above the deepest requested one and the LM head are not needed
    with torch.no_grad(), record_activations(model, layers, stop_after=max(layers)) as record:
        model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
    outputs = record.outputs
    # Averaged positions are where labels are set (prompt and padding are IGNORE_INDEX).
    mask = (batch.labels != IGNORE_INDEX).unsqueeze(-1).float()
    count = mask.sum(dim=1).clamp_min(1.0)
    return {layer: (hidden.float() * mask).sum(dim=1) / count for layer, hidden in outputs.items()}


def encode_easyedit_caa(tokenizer: Any, fmt: PromptFormat, question: str, completion: str) -> EncodedCompletion:
    """EasyEdit's CAA token set: ids of `prompt + " " + completion` tokenized together; the
    positions from the prompt's own token count on are the averaged ones. The question is stripped
    of surrounding whitespace first, as EasyEdit's `build_model_input` does."""
    prompt = fmt.prompt_text(tokenizer, question.strip())
    add_special_tokens = not fmt.uses_template(tokenizer)
    prompt_length = len(tokenizer(prompt, add_special_tokens=add_special_tokens)["input_ids"])
    answer = completion if fmt.completion_join == "as_stored" else completion.lstrip()
    ids = tokenizer(prompt + " " + answer, add_special_tokens=add_special_tokens)["input_ids"]
    if len(ids) <= prompt_length:
        raise ValueError(f"completion {completion!r} adds no token after the prompt of {question[:40]!r}")
    return EncodedCompletion(list(ids), prompt_length)


MULTIPLE_CHOICE_JOIN = "\nAnswer: "
"""What EasyEdit puts between the prompt and a multiple-choice completion."""


def encode_multiple_choice_caa(tokenizer: Any, fmt: PromptFormat, question: str, completion: str) -> EncodedCompletion:
    """EasyEdit's multiple-choice reading: `prompt + "\nAnswer: " + completion` tokenized together, read at
    its second-to-last token. The row is cut after that token (a causal model's activation there does
    not depend on later tokens) and that one position is the labelled one. The question is stripped,
    as EasyEdit's `build_model_input` does."""
    prompt = fmt.prompt_text(tokenizer, question.strip())
    add_special_tokens = not fmt.uses_template(tokenizer)
    answer = completion if fmt.completion_join == "as_stored" else completion.lstrip()
    ids = tokenizer(prompt + MULTIPLE_CHOICE_JOIN + answer, add_special_tokens=add_special_tokens)["input_ids"]
    if len(ids) < 2:
        raise ValueError(f"multiple_choice: {question[:40]!r} with {completion!r} is shorter than two tokens")
    return EncodedCompletion(list(ids[:-1]), len(ids) - 2)


def encode_caa_batch(
    tokenizer: Any, fmt: PromptFormat, questions: Sequence[str], completions: Sequence[str], token_set: str,
    multiple_choice: bool = False,
) -> TokenBatch:
    """A batch whose labelled positions are the ones CAA averages under `token_set` (one position
    per row under `multiple_choice`)."""
    if token_set not in CAA_TOKEN_SETS:
        raise ValueError(f"caa_token_set: {token_set!r} is not one of {', '.join(CAA_TOKEN_SETS)}")
    _check_multiple_choice(token_set, multiple_choice)
    if token_set == "completion_and_suffix":
        return encode_batch(tokenizer, fmt, questions, completions)
    encode = encode_multiple_choice_caa if multiple_choice else encode_easyedit_caa
    encoded = [encode(tokenizer, fmt, q, c) for q, c in zip(questions, completions)]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return collate(encoded, pad)


def _check_multiple_choice(token_set: str, multiple_choice: bool) -> None:
    if multiple_choice and token_set != "easyedit":
        raise ValueError(f"multiple_choice: true reads EasyEdit's answer-letter token and needs caa_token_set: easyedit, "
                         f"not {token_set!r}; set one of the two keys differently")


def _caa_from_capture(
    model: nn.Module, tokenizer: Any, pairs: Sequence[PolarityPair], layers: Sequence[int], fmt: PromptFormat,
    progress: bool, memory_mb: Optional[float],
) -> dict[int, torch.Tensor]:
    """The `completion_and_suffix` means from packed rows (prompt, matching, not-matching): layer
    outputs at the branch-1 positions minus those at the branch-2 positions, per pair."""
    batch = pair_batch(tokenizer, fmt, pairs)
    lay = build_layout(pairs_from_batch(batch), "packed", pad_id=0)
    entry = capture_cache.capture(model, lay, min(layers), 0, template=capture_template(fmt, tokenizer),
                                  memory_mb=memory_mb)
    logger.info("CAA: layer inputs from the capture cache (%s)", entry.source)
    totals = {layer: torch.zeros(model.config.hidden_size, dtype=torch.float64) for layer in layers}
    chunk = capture_cache.rows_per_chunk(model, lay.input_ids.shape[1], memory_mb)
    for start in tqdm(range(0, len(lay), chunk), desc="CAA activations", disable=not progress):
        rows = torch.arange(start, min(start + chunk, len(lay)))
        with torch.no_grad():
            outputs = replay_outputs(model, entry.inputs, layers, rows)
        branch = lay.branch[rows].to(outputs[min(layers)].device)
        for layer, hidden in outputs.items():
            means = []
            for side in (1, 2):
                mask = (branch == side).unsqueeze(-1).float()
                means.append((hidden.float() * mask).sum(dim=1) / mask.sum(dim=1))
            totals[layer] += (means[0] - means[1]).sum(dim=0).double().cpu()
    return {layer: (total / len(pairs)).float() for layer, total in totals.items()}


def compute_caa_vectors(
    model: nn.Module,
    tokenizer: Any,
    pairs: Sequence[PolarityPair],
    layers: Sequence[int],
    prompt_format: Optional[PromptFormat] = None,
    batch_size: int = 8,
    progress: bool = True,
    token_set: str = "easyedit",
    memory_mb: Optional[float] = capture_cache.DEFAULT_MEMORY_MB,
    multiple_choice: bool = False,
) -> dict[int, torch.Tensor]:
    """Mean difference vectors {layer: [hidden]} over `pairs`, averaging the `token_set` positions
    (`completion_and_suffix` through the capture cache, in row chunks under `memory_mb`), or, under
    `multiple_choice`, the activations at EasyEdit's answer-letter token."""
    if not pairs:
        raise ValueError("CAA needs at least one polarity pair")
    _check_multiple_choice(token_set, multiple_choice)
    for layer in layers:
        check_layer(model, layer, source="layers")
    fmt = prompt_format or PromptFormat()
    if token_set == "completion_and_suffix":
        return _caa_from_capture(model, tokenizer, pairs, list(layers), fmt, progress, memory_mb)
    device = model_device(model)
    totals = {layer: torch.zeros(model.config.hidden_size, dtype=torch.float64) for layer in layers}
    for start in tqdm(range(0, len(pairs), batch_size), desc="CAA activations", disable=not progress):
        chunk = pairs[start : start + batch_size]
        questions = [p.question for p in chunk]
        matching = encode_caa_batch(tokenizer, fmt, questions, [p.matching for p in chunk], token_set,
                                    multiple_choice).to(device)
        not_matching = encode_caa_batch(tokenizer, fmt, questions, [p.not_matching for p in chunk], token_set,
                                        multiple_choice).to(device)
        positive = mean_completion_activations(model, matching, layers)
        negative = mean_completion_activations(model, not_matching, layers)
        for layer in layers:
            totals[layer] += (positive[layer] - negative[layer]).sum(dim=0).double().cpu()
    return {layer: (total / len(pairs)).float() for layer, total in totals.items()}


def train(hparams: Any, pairs: Sequence[PolarityPair], model: nn.Module, tokenizer: Any, **_: Any) -> dict[int, DynamicWeightUpdate]:
    """EasyEdit's `caa` generate step: one vector per layer, as `vector` updates."""
    vectors = compute_caa_vectors(
        model, tokenizer, pairs, list(hparams.layers), PromptFormat.from_hparams(hparams),
        token_set=getattr(hparams, "caa_token_set", "easyedit"),
        multiple_choice=bool(getattr(hparams, "multiple_choice", False)),
    )
    return {layer: DynamicWeightUpdate.from_vector(vector) for layer, vector in vectors.items()}
