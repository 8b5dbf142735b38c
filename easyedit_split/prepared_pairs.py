"""The training pairs, tokenized once: what the shared trainer (`training`) steps over.

Every example gives two sequences (row `2i` matching, row `2i + 1` not matching), tokenized once
with the chat template, joining and masking of `prompts`. For the fast path the same examples are
packed, one row per example holding its prompt and both completions (`packing`), the inputs of the
trained layer for those rows and the keys/values of the chat-template prefix are captured once
(`capture_cache`), and completion NLLs are replayed from there (`replay`). The unsteered reference
NLLs are computed here too, once, when a loss needs them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional, Sequence

import torch
from torch import nn

from .fastpath import capture_cache
from .data import PolarityPair
from .errors import TrainingError
from .fastpath.packing import (PackedLayout, build_layout, capture_template, hide_keys, pair_batch, pairs_from_batch,
                               replay_start)
from .fastpath.token_nll import completion_token_nll
from .prompts import (IGNORE_INDEX, PromptFormat, TokenBatch, attention_mask_rule, first_steered_position,
                      hidden_token_id)
from .fastpath.replay import CapturedInputs, PrefixKeyValues, full_forward_nll, replay_hidden_after_prefix

if TYPE_CHECKING:  # annotations only: the fields of any gradient-trained method's hparams are read
    from .hparams import GradientTrainHyperParams

__all__ = ["PreparedPairs", "prepare_pairs"]

_REFERENCE_CHUNK = 64  # rows per unsteered scoring pass (fewer when the memory budget says so)


@dataclass
class PreparedPairs:
    """Every example's two sequences, tokenized once: row `2i` matching, row `2i + 1` not matching.

    `steered` is the per-sequence steering mask (`[2 * examples, seq]`, 1 = steered); by default
    every position from `prefix_length` on (EasyEdit's chat-template prefix stays unsteered).
    `layout` packs each example's prompt and both completions into one row (`packing`); the fast
    path's `captured` inputs of the trained layer and `prefix_cache` (keys/values of the leading
    positions every packed row shares, never steered) are of those rows. `reference_nll` holds the
    unsteered completion NLL sums of every sequence (computed once, when needed).
    """

    batch: TokenBatch
    prefix_length: int = 0
    captured: Optional[CapturedInputs] = None
    reference_nll: Optional[torch.Tensor] = None
    prefix_cache: Optional[PrefixKeyValues] = None
    steered: Optional[torch.Tensor] = None
    template: str = ""
    memory_mb: Optional[float] = capture_cache.DEFAULT_MEMORY_MB
    capture_source: str = ""
    _layout: Optional[PackedLayout] = field(default=None, repr=False)

    @property
    def n_examples(self) -> int:
        return len(self.batch) // 2

    @property
    def lengths(self) -> torch.Tensor:
        """Tokens per sequence (prompt + completion; padding excluded)."""
        return self.batch.attention_mask.sum(dim=1)

    @property
    def loss_lengths(self) -> torch.Tensor:
        """RePS's sequence lengths: the sums of the mask the model is given (EasyEdit's
        `winning_lens`/`losing_lens`), so `attention_mask: pad_id` leaves hidden tokens out."""
        return self.batch.model_mask().sum(dim=1)

    @property
    def layout(self) -> PackedLayout:
        """One packed row per example: prompt, matching and not-matching completion."""
        if self._layout is None:
            batch = self.batch.to("cpu")
            self._layout = hide_keys(build_layout(pairs_from_batch(batch), "packed", pad_id=0), batch)
        return self._layout

    def steering_mask(self) -> torch.Tensor:
        """The per-sequence steering mask `[2 * examples, seq]` (float, 1 = steered)."""
        if self.steered is not None:
            return self.steered.float().cpu()
        width = self.batch.input_ids.shape[1]
        return (torch.arange(width) >= self.prefix_length).float().expand(len(self.batch), width)

    def packed_steering(self) -> torch.Tensor:
        """`steering_mask` laid out like the packed rows `[examples, packed width]`."""
        return self.layout.to_packed(self.steering_mask())

    def to(self, device: Any) -> "PreparedPairs":
        return PreparedPairs(self.batch.to(device), self.prefix_length, steered=self.steered, template=self.template,
                             memory_mb=self.memory_mb, _layout=self._layout)

    def capture(self, model: nn.Module, layer: int) -> CapturedInputs:
        """Capture (once; `capture_cache` reuses an identical earlier capture) the inputs of layers
        `layer..N-1` for every packed row, and the keys/values there of the leading positions that
        are the same in every row and never steered."""
        if self.captured is None or self.captured.start_layer != layer:
            skip = replay_start(self.layout, self.packed_steering())
            entry = capture_cache.capture(model, self.layout, layer, skip, template=self.template,
                                          memory_mb=self.memory_mb)
            self.captured, self.prefix_cache, self.capture_source = entry.inputs, entry.prefix, entry.source
        return self.captured

    def release(self) -> None:
        """Drop this object's references to the captured inputs (the capture cache may keep them)."""
        self.captured = self.prefix_cache = None

    @property
    def replay_from(self) -> int:
        return self.prefix_cache.length if self.prefix_cache is not None else 0

    def packed_nll(self, model: nn.Module, examples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Completion NLL sums and token counts `[len(examples), 2]` (matching, not-matching) of the
        packed rows `examples`, replayed from the captured inputs at the positions after the cached
        prefix (hooks attached to the model, such as interventions, fire)."""
        lay, start = self.layout, self.replay_from
        device = self.captured.hidden_states.device
        end = int(lay.lengths[examples].max())
        hidden = replay_hidden_after_prefix(model, self.captured, self.prefix_cache, examples.to(device), end)
        out_row, position, token, slot = lay.row_targets(examples)
        run = hidden.device
        token_nll = completion_token_nll(model, hidden, out_row.to(run), (position - start).to(run), token.to(run))
        flat = (out_row * 2 + slot % 2).to(run)
        sums = torch.zeros(2 * len(examples), dtype=token_nll.dtype, device=run).index_add(0, flat, token_nll)
        counts = torch.zeros(2 * len(examples), dtype=torch.long).index_add_(0, out_row * 2 + slot % 2,
                                                                              torch.ones_like(out_row))
        return sums.view(-1, 2), counts.view(-1, 2).to(run)

    def compute_reference(self, model: nn.Module, fast: bool = True) -> torch.Tensor:
        """Unsteered completion NLL sum of every sequence (no intervention, no dropout)."""
        if self.reference_nll is not None:
            return self.reference_nll
        sums = []
        with torch.no_grad():
            if fast and self.captured is not None:
                width = int(self.layout.lengths.max())
                chunk = min(_REFERENCE_CHUNK, capture_cache.rows_per_chunk(model, width, self.memory_mb))
                for start in range(0, self.n_examples, chunk):
                    examples = torch.arange(start, min(start + chunk, self.n_examples))
                    sums.append(self.packed_nll(model, examples)[0].reshape(-1))
            else:
                for start in range(0, len(self.batch), _REFERENCE_CHUNK):
                    rows = torch.arange(start, min(start + _REFERENCE_CHUNK, len(self.batch)))
                    sums.append(full_forward_nll(model, self.batch, {}, rows=rows).sum)
        self.reference_nll = torch.cat(sums)
        return self.reference_nll


def prepare_pairs(tokenizer: Any, pairs: Sequence[PolarityPair], hparams: GradientTrainHyperParams) -> PreparedPairs:
    """Tokenize every pair once (chat template, joining and masking of `prompts`)."""
    if not pairs:
        raise TrainingError("no training pairs: the dataset (or concept) is empty")
    fmt = PromptFormat.from_hparams(hparams)
    max_length = hparams.output_length
    # attention_mask (docs/conventions.md): `pad_id` hides every token equal to the pad id, as EasyEdit's collator
    hide = hidden_token_id(tokenizer, attention_mask_rule(hparams))
    batch = pair_batch(tokenizer, fmt, pairs, max_length, hide)
    empty = ((batch.labels != IGNORE_INDEX).sum(dim=1) == 0).nonzero().flatten().tolist()
    if empty:
        example = empty[0] // 2
        raise TrainingError(
            f"pair {example} ({pairs[example].question[:40]!r}...): its completion is cut off by "
            f"output_length={max_length}; raise output_length"
        )
    # steer_positions (docs/conventions.md): every position from `prefix` on is steered
    prefix = first_steered_position(tokenizer, fmt, hparams.intervention_method, "training", hparams.exclude_bos)
    return PreparedPairs(batch, prefix, template=capture_template(fmt, tokenizer), memory_mb=hparams.fast_path_memory_mb)
