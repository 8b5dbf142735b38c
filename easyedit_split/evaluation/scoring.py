"""Batched teacher-forced scoring of polarity pairs over a sweep of multipliers.

For every pair and multiplier `m` this computes `L_p(m) = -log P_m(matching | question)` and
`L_n(m) = -log P_m(not_matching | question)` over completion (+ end-of-turn suffix) tokens.

How it is fast, and why it is exact:
- Layers below the lowest steered layer run once per example (`replay.capture_layer_inputs`);
  only layers `l..N-1` run per multiplier, and a sweep of K multipliers is K rows of one batch
  with one multiplier per row (`replay.replay_hidden`).
- Shared prompt pass ("packed" layout): one row holds `prompt + matching + not_matching`. A
  custom 4-d attention mask lets the not-matching tokens see the prompt and themselves but not
  the matching tokens, and their position ids restart where the prompt ends. Every token
  therefore sees exactly what it would see in its own sequence, and the interventions act
  position-wise, so each NLL equals the one from two separate sequences; the prompt is computed
  once for both completions (what a reused key/value cache would give, without cache plumbing).
  Sliding-window layers (Gemma2) get their own mask built from the logical positions.
- The LM head runs only at the positions that predict completion tokens, in slices.

`layout="rows"` scores matching and not-matching as two separate rows instead (the same code,
a plain causal mask); it is the cross-check of the packed layout.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..interventions import DynamicWeightUpdate, attach
from ..models import hidden_to_logits, model_device, num_layers
from ..prompts import (
    IGNORE_INDEX, PromptFormat, TokenBatch, encode_completion, encode_prompt, first_steered_position, pad_token_id_of,
)
from ..recording import record_activations
from ..replay import CapturedInputs, capture_layer_inputs, capture_prefix, replay_hidden_after_prefix, shared_prefix_length

logger = logging.getLogger(__name__)

NLL_MODES = ("sequence", "token")
LAYOUTS = ("packed", "rows")

# activation_hook(layer, hidden [R, S, H], row_examples [R], row_multipliers [R], valid [R, S])
ActivationHook = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], None]


@dataclass(frozen=True)
class EncodedPair:
    """Token ids of one polarity pair: the shared prompt and each completion (+ suffix)."""

    prompt_ids: tuple[int, ...]
    matching_ids: tuple[int, ...]
    not_matching_ids: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.prompt_ids:
            raise ValueError("a pair needs at least one prompt token (the first completion token is predicted from it)")
        if not self.matching_ids or not self.not_matching_ids:
            raise ValueError("a completion tokenizes to nothing")


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


# ============================================================================ layout


@dataclass
class _Layout:
    """Rows of token ids with their logical positions, branch ids and scoring targets."""

    input_ids: torch.Tensor       # [B, S]
    position_ids: torch.Tensor    # [B, S]
    branch: torch.Tensor          # [B, S]: 0 prompt, 1 matching, 2 not-matching, -1 padding
    valid: torch.Tensor           # [B, S] bool
    # scoring targets, flattened: which captured row, which position predicts, which token, which output
    target_row: torch.Tensor
    target_pos: torch.Tensor
    target_token: torch.Tensor
    target_slot: torch.Tensor     # index into [N pairs * 2] (pair * 2 + 0 matching / 1 not-matching)
    row_pair: torch.Tensor        # [B] pair index (within the chunk) of each row


def _build_layout(pairs: Sequence[EncodedPair], layout: str, pad_id: int) -> _Layout:
    rows: list[tuple[list[int], list[int], list[int]]] = []  # ids, positions, branch
    targets: list[tuple[int, int, int, int]] = []
    row_pair: list[int] = []
    for index, pair in enumerate(pairs):
        prompt, plen = list(pair.prompt_ids), len(pair.prompt_ids)
        pieces = [(1, list(pair.matching_ids)), (2, list(pair.not_matching_ids))]
        groups = [pieces] if layout == "packed" else [[p] for p in pieces]
        for group in groups:
            ids, positions, branch = list(prompt), list(range(plen)), [0] * plen
            row = len(rows)
            for branch_id, completion in group:
                start = len(ids)
                ids += completion
                positions += list(range(plen, plen + len(completion)))
                branch += [branch_id] * len(completion)
                predictors = [plen - 1] + list(range(start, start + len(completion) - 1))
                slot = index * 2 + (branch_id - 1)
                targets += [(row, p, t, slot) for p, t in zip(predictors, completion)]
            rows.append((ids, positions, branch))
            row_pair.append(index)
    width = max(len(r[0]) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)
    branch_t = torch.full((len(rows), width), -1, dtype=torch.long)
    for i, (ids, positions, branch) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        position_ids[i, : len(ids)] = torch.tensor(positions)
        position_ids[i, len(ids):] = torch.arange(width - len(ids)) + (positions[-1] + 1)
        branch_t[i, : len(ids)] = torch.tensor(branch)
    t = torch.tensor(targets, dtype=torch.long)
    return _Layout(input_ids, position_ids, branch_t, branch_t >= 0, t[:, 0], t[:, 1], t[:, 2], t[:, 3],
                   torch.tensor(row_pair, dtype=torch.long))


def _attention_mask(lay: _Layout, dtype: torch.dtype, sliding_window: Optional[int] = None) -> torch.Tensor:
    """Additive 4-d mask [B, 1, S, S]: key k is visible to query q when k <= q, k is a real token,
    and k is prompt or on q's branch (and, for sliding layers, pos(q) - pos(k) < window).
    Padding queries see only themselves, so no softmax row is empty."""
    size = lay.input_ids.shape[1]
    index = torch.arange(size)
    causal = index.view(1, size, 1) >= index.view(1, 1, size)
    bq, bk = lay.branch.unsqueeze(2), lay.branch.unsqueeze(1)
    allowed = causal & lay.valid.unsqueeze(1) & lay.valid.unsqueeze(2) & ((bk == 0) | (bk == bq))
    if sliding_window:
        distance = lay.position_ids.unsqueeze(2) - lay.position_ids.unsqueeze(1)
        allowed &= distance < sliding_window
    allowed |= torch.eye(size, dtype=torch.bool).unsqueeze(0) & ~lay.valid.unsqueeze(2)
    mask = torch.zeros(allowed.shape, dtype=dtype)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask.unsqueeze(1)


def _model_mask(model: nn.Module, lay: _Layout, dtype: torch.dtype, device: torch.device) -> Any:
    config = getattr(model.config, "text_config", None) or model.config
    full = _attention_mask(lay, dtype).to(device)
    if getattr(config, "layer_types", None) is None:
        return full
    window = getattr(config, "sliding_window", None)
    sliding = _attention_mask(lay, dtype, window).to(device) if window else full
    return {"full_attention": full, "sliding_attention": sliding}


@contextmanager
def _inject_forward_kwargs(model: nn.Module, **overrides: Any) -> Iterator[None]:
    """Override keyword arguments of the model's own forward (mask, position ids) for one call."""

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple:
        kwargs.update(overrides)
        return args, kwargs

    handle = model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


# ============================================================================ scoring


def _capture(model: nn.Module, lay: _Layout, start_layer: int) -> CapturedInputs:
    device = model_device(model)
    dtype = next(model.parameters()).dtype
    batch = TokenBatch(lay.input_ids.to(device), lay.valid.long().to(device),
                       torch.full_like(lay.input_ids, IGNORE_INDEX).to(device))
    with _inject_forward_kwargs(model, attention_mask=_model_mask(model, lay, dtype, device),
                                position_ids=lay.position_ids.to(device)):
        return capture_layer_inputs(model, batch, start_layer)


def _completion_token_nll(model: nn.Module, hidden: torch.Tensor, rows: torch.Tensor, positions: torch.Tensor,
                          tokens: torch.Tensor, slice_size: int = 1024) -> torch.Tensor:
    """-log p(token | hidden at (row, position)), LM head at those positions only, in slices."""
    out = []
    for start in range(0, rows.shape[0], slice_size):
        sl = slice(start, start + slice_size)
        logits = hidden_to_logits(model, hidden[rows[sl], positions[sl]]).float()
        out.append(torch.logsumexp(logits, dim=-1) - logits.gather(-1, tokens[sl].unsqueeze(-1)).squeeze(-1))
    return torch.cat(out)


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
) -> PairScores:
    """Score `pairs` under `updates` at every multiplier (see the module docstring).

    `batch_size` is the most rows one replayed forward holds (rows = pairs x multipliers, two
    rows per pair with `layout="rows"`). With `activation_hook`, the (steered) outputs of
    `activation_layers` are passed to it for every row chunk. The interventions act on logical
    positions `>= steer_from` (`prompts.first_steered_position`: the `steer_positions` rule,
    docs/conventions.md).
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
    start_layer = min(updates) if updates else n_layers - 1
    if activation_layers:
        start_layer = min(start_layer, min(activation_layers))
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
                lay = _build_layout([pairs[i] for i in chunk], layout, pad_token_id)
                captured = _capture(model, lay, start_layer)
                # The shared, never-steered leading tokens (the chat template's prefix) are run once:
                # their keys/values at layers start..N feed every replayed row (replay.capture_prefix).
                skip = min(steer_from, shared_prefix_length(captured.batch), int(lay.target_pos.min()))
                prefix = capture_prefix(model, captured, skip) if skip > 0 else None
                n_rows = lay.input_ids.shape[0]
                chunk_counts = torch.zeros(len(chunk) * 2).index_add_(0, lay.target_slot, torch.ones(len(lay.target_slot)))
                counts[chunk] = chunk_counts.view(-1, 2).numpy()
                # all (multiplier k, captured row r) combinations, in slices of batch_size rows
                combos = [(k, r) for k in range(n_mult) for r in range(n_rows)]
                for start in range(0, len(combos), batch_size):
                    part = combos[start: start + batch_size]
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
                    # targets of the selected rows: expand each row's target list
                    t_rows, t_pos, t_tok, t_slot, t_k = [], [], [], [], []
                    for out_row, (k, r) in enumerate(part):
                        sel = lay.target_row == r
                        t_pos.append(lay.target_pos[sel] - skip)
                        t_tok.append(lay.target_token[sel])
                        t_slot.append(lay.target_slot[sel])
                        t_rows.append(torch.full((int(sel.sum()),), out_row, dtype=torch.long))
                        t_k.append(torch.full((int(sel.sum()),), k, dtype=torch.long))
                    t_rows_t, t_pos_t = torch.cat(t_rows).to(device), torch.cat(t_pos).to(device)
                    token_nll = _completion_token_nll(model, hidden, t_rows_t, t_pos_t, torch.cat(t_tok).to(device))
                    flat = torch.cat(t_k) * (len(chunk) * 2) + torch.cat(t_slot)
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
        info={"layout": layout, "start_layer": start_layer, "batch_size": batch_size, "steer_from": steer_from},
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
