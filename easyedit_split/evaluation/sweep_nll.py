"""Batched teacher-forced scoring of polarity pairs over a sweep of multipliers.

For every pair and multiplier `m` this computes `L_p(m) = -log P_m(matching | question)` and
`L_n(m) = -log P_m(not_matching | question)` over completion (+ end-of-turn suffix) tokens.

How it is fast, and why it is exact:
- Layers below the lowest steered layer run once per example (`replay.capture_layer_inputs`);
  only layers `l..N-1` run per multiplier, and a sweep of K multipliers is K rows of one batch
  with one multiplier per row. A vector at `l` acts on layer `l`'s output only, so layer `l`
  runs once too, in the capture, and the multipliers replay `l+1..N-1` (`replay.replay_layer`).
- The chat template's shared, never-steered prefix is run once per capture at the replayed
  layers (`replay.capture_prefix`); each multiplier replays only the positions after it.
- Rows of similar length are replayed together (each pair's K multipliers are neighbours in the
  length-sorted order), so a replayed batch carries little padding.
- Shared prompt pass (`packing`, the layout training uses too): one row holds
  `prompt + matching + not_matching` with a custom 4-d attention mask, so the prompt is computed
  once for both completions and each NLL equals the one from two separate sequences.
- Captures are reused (`capture_cache`): scoring several methods at one layer on the same pairs
  captures once. Captures and replays work in chunks under `memory_mb`.
- The LM head runs only at the positions that predict completion tokens, in slices.

`layout="rows"` scores matching and not-matching as two separate rows instead (the same code,
a plain causal mask); it is the cross-check of the packed layout.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..fastpath import capture_cache
from ..fastpath.packing import LAYOUTS, EncodedPair, build_layout, replay_start
from ..fastpath.recording import record_activations
from ..fastpath.replay import replay_hidden_after_prefix, replay_layer
from ..fastpath.token_nll import completion_token_nll
from ..interventions import DynamicWeightUpdate, attach
from ..models import model_device, num_layers
from ..prompts import PromptFormat, encode_completion, encode_prompt, first_steered_position, pad_token_id_of

logger = logging.getLogger(__name__)

NLL_MODES = ("sequence", "token")

# activation_hook(layer, hidden [R, S, H], row_examples [R], row_multipliers [R], valid [R, S])
ActivationHook = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], None]


def encode_pairs(tokenizer: Any, fmt: PromptFormat, pairs: Sequence[Any]) -> list[EncodedPair]:
    """Tokenize `PolarityPair`s as `prompts.encode_completion` does (JOIN_RULE), keeping the prompt once."""
    encoded = []
    for index, pair in enumerate(pairs):
        prompt = encode_prompt(tokenizer, fmt, pair.question)
        matching = encode_completion(tokenizer, fmt, pair.question, pair.matching)
        not_matching = encode_completion(tokenizer, fmt, pair.question, pair.not_matching)
        for name, enc in (("matching", matching), ("not_matching", not_matching)):
            if enc.input_ids[: enc.prompt_length] != list(prompt):
                raise ValueError(f"pair {index}: the prompt tokens of '{name}' differ from the prompt's own tokens")
        encoded.append(EncodedPair(
            tuple(prompt), tuple(matching.input_ids[matching.prompt_length:]),
            tuple(not_matching.input_ids[not_matching.prompt_length:]),
        ))
    return encoded


@dataclass
class PairScores:
    """NLLs of the matching and not-matching completions, `[K multipliers, N pairs]`.

    `*_sum` are sequence NLLs (sum over completion tokens), `*_tokens` the token counts;
    `matching_nll`/`not_matching_nll` are what `nll_mode` selects (sum, or per-token mean).
    """

    multipliers: np.ndarray
    matching_sum: np.ndarray
    not_matching_sum: np.ndarray
    matching_tokens: np.ndarray
    not_matching_tokens: np.ndarray
    nll_mode: str = "sequence"
    info: dict = field(default_factory=dict)

    @property
    def matching_nll(self) -> np.ndarray:
        return self.matching_sum if self.nll_mode == "sequence" else self.matching_sum / self.matching_tokens

    @property
    def not_matching_nll(self) -> np.ndarray:
        return self.not_matching_sum if self.nll_mode == "sequence" else self.not_matching_sum / self.not_matching_tokens

    def with_mode(self, nll_mode: str) -> "PairScores":
        _check_mode(nll_mode)
        return PairScores(self.multipliers, self.matching_sum, self.not_matching_sum, self.matching_tokens,
                          self.not_matching_tokens, nll_mode, dict(self.info))


def _check_mode(nll_mode: str) -> None:
    if nll_mode not in NLL_MODES:
        raise ValueError(f"nll_mode: '{nll_mode}' is not one of {NLL_MODES}")


# ============================================================================ scoring


def score_encoded_pairs(
    model: nn.Module,
    pairs: Sequence[EncodedPair],
    updates: Mapping[int, DynamicWeightUpdate],
    multipliers: Sequence[float],
    nll_mode: str = "sequence",
    batch_size: int = 64,
    layout: str = "packed",
    pad_token_id: int = 0,
    progress: bool = False,
    activation_layers: Sequence[int] = (),
    activation_hook: Optional[ActivationHook] = None,
    desc: str = "scoring",
    steer_from: int = 0,
    memory_mb: Optional[float] = capture_cache.DEFAULT_MEMORY_MB,
    start_layer: Optional[int] = None,
) -> PairScores:
    """Score `pairs` under `updates` at every multiplier (see the module docstring).

    `batch_size` is the most rows one replayed forward holds (rows = pairs x multipliers, two
    rows per pair with `layout="rows"`). With `activation_hook`, the (steered) outputs of
    `activation_layers` are passed to it for every row chunk. The interventions act on logical
    positions `>= steer_from` (`prompts.first_steered_position`: the `steer_positions` rule,
    docs/conventions.md). `memory_mb` bounds the rows of one capture or replay pass (None: no
    bound); the scores do not depend on it. `start_layer` (default: the lowest steered or recorded
    layer) is where replay starts; it must not be above either, and an unsteered pass may name the
    layer the steered sweeps start at so that they share one capture (`capture_cache`).
    """
    _check_mode(nll_mode)
    if layout not in LAYOUTS:
        raise ValueError(f"layout: '{layout}' is not one of {LAYOUTS}")
    if not pairs:
        raise ValueError("no pairs to score")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    multipliers = [float(m) for m in multipliers]
    if not multipliers:
        raise ValueError("no multipliers to score")
    n_layers = num_layers(model)
    lowest = min(updates) if updates else n_layers - 1
    if activation_layers:
        lowest = min(lowest, min(activation_layers))
    if start_layer is None:
        start_layer = lowest
    elif not 0 <= int(start_layer) <= lowest:
        raise ValueError(f"start_layer={start_layer}: must be in 0..{lowest} (the lowest steered or recorded layer)")
    start_layer = int(start_layer)
    # a vector at start_layer leaves that layer's output unsteered: capture it and replay from the next
    # layer (the hooks of start_layer fire on the captured output). With nothing steered there (an
    # unsteered pass naming the layer) the capture stays at start_layer, which serves every later sweep:
    # LoRA's at that layer, a vector's one layer up (capture_cache makes that one from it)
    at_start = [u for layer, u in updates.items() if layer == start_layer]
    replay_from = replay_layer(model, start_layer, at_start) if at_start else start_layer
    device = model_device(model)
    n_pairs, n_mult = len(pairs), len(multipliers)
    sums = np.zeros((n_mult, n_pairs, 2))
    counts = np.zeros((n_pairs, 2))

    # Sort by length so chunks carry little padding; results are written back by pair index.
    lengths = [len(p.prompt_ids) + len(p.matching_ids) + len(p.not_matching_ids) for p in pairs]
    order = sorted(range(n_pairs), key=lambda i: lengths[i])
    rows_per_pair = 1 if layout == "packed" else 2
    pairs_per_capture = max(1, batch_size // rows_per_pair)
    chunks = [order[i: i + pairs_per_capture] for i in range(0, n_pairs, pairs_per_capture)]
    total_rows = n_pairs * rows_per_pair * n_mult
    bar = None
    if progress:
        bar = tqdm(total=total_rows, desc=desc, unit="row", leave=False)
    try:
        with torch.no_grad():
            for chunk in chunks:
                lay = build_layout([pairs[i] for i in chunk], layout, pad_token_id)
                # The shared, never-steered leading tokens (the chat template's prefix) are run once:
                # their keys/values at layers start..N feed every replayed row (replay.capture_prefix).
                skip = replay_start(lay, lay.position_ids >= steer_from)
                cached = capture_cache.capture(model, lay, replay_from, skip, memory_mb=memory_mb)
                captured, prefix, source = cached.inputs, cached.prefix, cached.source
                n_rows = len(lay)
                chunk_counts = torch.zeros(len(chunk) * 2).index_add_(0, lay.target_slot, torch.ones(len(lay.target_slot)))
                counts[chunk] = chunk_counts.view(-1, 2).numpy()
                # all (multiplier k, captured row r) combinations, in slices of at most batch_size rows;
                # row-major over the length-sorted rows, so a slice's rows have similar lengths (little padding)
                combos = [(k, r) for r in range(n_rows) for k in range(n_mult)]
                step = min(batch_size, capture_cache.rows_per_chunk(model, lay.input_ids.shape[1], memory_mb))
                for start in range(0, len(combos), step):
                    part = combos[start: start + step]
                    ks = torch.tensor([k for k, _ in part])
                    rows = torch.tensor([r for _, r in part])
                    row_m = torch.tensor([multipliers[k] for k in ks.tolist()], dtype=torch.float32)
                    end = int(lay.valid.index_select(0, rows).sum(dim=1).max())
                    steered = (lay.position_ids.index_select(0, rows)[:, skip:end] >= steer_from).to(device)
                    recorded = activation_layers if activation_hook is not None else ()
                    with attach(model, updates, row_m.to(device), positions=steered), \
                            record_activations(model, recorded) as record:
                        hidden = replay_hidden_after_prefix(model, captured, prefix, rows.to(device), end=end)
                    if activation_hook is not None:
                        valid = lay.valid.index_select(0, rows)[:, skip:end].to(device)
                        pair_idx = torch.tensor(chunk)[lay.row_pair.index_select(0, rows)]
                        for layer in activation_layers:
                            activation_hook(layer, record.outputs[layer], pair_idx, row_m, valid)
                    out_row, t_pos, t_tok, t_slot = lay.row_targets(rows)
                    token_nll = completion_token_nll(model, hidden, out_row.to(device), (t_pos - skip).to(device),
                                                     t_tok.to(device))
                    flat = ks[out_row] * (len(chunk) * 2) + t_slot
                    acc = torch.zeros(n_mult * len(chunk) * 2, dtype=torch.float64).index_add_(
                        0, flat, token_nll.double().cpu())
                    sums[:, chunk] += acc.view(n_mult, len(chunk), 2).numpy()
                    if bar is not None:
                        bar.update(len(part))
    finally:
        if bar is not None:
            bar.close()
    return PairScores(
        np.asarray(multipliers), sums[..., 0], sums[..., 1], counts[:, 0], counts[:, 1], nll_mode,
        info={"layout": layout, "start_layer": start_layer, "replay_from": replay_from, "batch_size": batch_size,
              "steer_from": steer_from, "capture_source": source},
    )


def score_pairs(
    model: nn.Module,
    tokenizer: Any,
    pairs: Sequence[Any],
    updates: Mapping[int, DynamicWeightUpdate],
    multipliers: Sequence[float],
    fmt: PromptFormat = PromptFormat(),
    **kwargs: Any,
) -> PairScores:
    """Tokenize `PolarityPair`s (JOIN_RULE, chat template per `fmt`) and score them; see `score_encoded_pairs`."""
    pad = pad_token_id_of(tokenizer)
    form = next(iter(updates.values())).method if updates else "vector"
    kwargs.setdefault("steer_from", first_steered_position(tokenizer, fmt, form, "scoring"))  # docs/conventions.md
    return score_encoded_pairs(model, encode_pairs(tokenizer, fmt, pairs), updates, multipliers,
                               pad_token_id=pad, **kwargs)
