"""The packed layout: one row holds a prompt and both of its completions, scored in one pass.

Training and sweep scoring both need the NLL of two completions of the same prompt. Run as two
sequences, the prompt is computed twice. Packed, a row is `prompt + matching + not_matching`: a
custom 4-d attention mask lets the not-matching tokens see the prompt and themselves but not the
matching tokens, and their position ids restart where the prompt ends. Every token therefore
sees exactly what it sees in its own sequence, and interventions act position-wise (with one
multiplier per row and a per-position steering mask), so each NLL equals the one from two
separate sequences while the prompt is computed once. Sliding-window layers (Gemma2) get their
own mask, built from the logical positions.

`layout="rows"` puts each completion in its own row instead (the same code with a plain causal
mask): the cross-check of the packed layout.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Sequence

import torch
from torch import nn

from ..models import model_device
from ..prompts import IGNORE_INDEX, PromptFormat, TokenBatch, collate, encode_completion
from .replay import CapturedInputs, PrefixKeyValues, capture_layer_inputs, replay_hidden_at
from .token_nll import completion_token_nll

LAYOUTS = ("packed", "rows")

__all__ = [
    "EncodedPair", "PackedLayout", "build_layout", "capture_layout", "pairs_from_batch", "replay_start",
    "select_rows", "LAYOUTS", "pair_batch", "capture_template", "hide_keys",
    "branch_positions", "branch_nll", "shared_columns",
]


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


@dataclass
class PackedLayout:
    """Rows of token ids with their logical positions, branch ids and scoring targets.

    Branch ids: 0 prompt, 1 matching, 2 not-matching, -1 padding. Targets are flattened and
    sorted by row: the row, the position that predicts, the token, and the slot
    (`pair * 2 + 0` matching / `+ 1` not-matching) of each completion token. `hidden_keys`
    ([B, S] bool, None = none): real tokens no position attends to (`attention_mask: pad_id`).
    """

    input_ids: torch.Tensor       # [B, S]
    position_ids: torch.Tensor    # [B, S]
    branch: torch.Tensor          # [B, S]
    valid: torch.Tensor           # [B, S] bool
    target_row: torch.Tensor
    target_pos: torch.Tensor
    target_token: torch.Tensor
    target_slot: torch.Tensor
    row_pair: torch.Tensor        # [B] pair index of each row
    hidden_keys: Optional[torch.Tensor] = None  # [B, S] bool

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def lengths(self) -> torch.Tensor:
        return self.valid.sum(dim=1)

    def row_targets(self, rows: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Targets of `rows` (a selection, repeats allowed): `(out_row, position, token, slot)`,
        `out_row` indexing `rows`."""
        counts = torch.bincount(self.target_row, minlength=len(self))
        starts = torch.cumsum(counts, 0) - counts
        per_row = counts[rows]
        out_row = torch.repeat_interleave(torch.arange(len(rows)), per_row)
        offset = torch.arange(int(per_row.sum())) - torch.repeat_interleave(torch.cumsum(per_row, 0) - per_row, per_row)
        index = starts[rows][out_row] + offset
        return out_row, self.target_pos[index], self.target_token[index], self.target_slot[index]

    def to_packed(self, sequence_values: torch.Tensor) -> torch.Tensor:
        """Per-sequence values `[2 * pairs, seq]` (row `2i` matching, `2i + 1` not-matching of pair
        `i`, by logical position) laid out like this layout's rows; the prompt takes the matching
        row's values, which must equal the not-matching row's there. Padding gets 0."""
        pair, branch = self.row_pair.unsqueeze(1).expand_as(self.branch), self.branch
        sequence = 2 * pair + (branch == 2).long()
        position = self.position_ids.clamp_max(sequence_values.shape[1] - 1)
        packed = sequence_values[sequence, position] * self.valid
        prompt = branch == 0
        other = sequence_values[(2 * pair + 1)[prompt], position[prompt]]
        if not torch.equal(packed[prompt], other):
            raise ValueError("the two sequences of a pair differ on prompt positions; they cannot share one prompt pass")
        return packed

    def to_sequences(self, packed_values: torch.Tensor, rows: torch.Tensor, branches: torch.Tensor,
                     width: int) -> torch.Tensor:
        """The inverse of `to_packed` for a selection: `[len(rows), width]` values of the sequence
        of branch `branches[i]` (1 matching, 2 not-matching) from packed row `rows[i]` (the values may
        cover only the first positions of the packed rows)."""
        packed_width = packed_values.shape[1]
        branch, position = self.branch[rows, :packed_width], self.position_ids[rows, :packed_width]
        take = (branch == 0) | (branch == branches.unsqueeze(1))
        column = torch.where(take & (position < width), position, torch.full_like(position, width))
        out = torch.zeros(len(rows), width + 1, dtype=packed_values.dtype, device=packed_values.device)
        out.scatter_(1, column.to(out.device), packed_values)
        return out[:, :width]


def build_layout(pairs: Sequence[EncodedPair], layout: str = "packed", pad_id: int = 0) -> PackedLayout:
    """Rows for `pairs`: one per pair (`packed`) or one per completion (`rows`), right-padded."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout: '{layout}' is not one of {LAYOUTS}")
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
    return PackedLayout(input_ids, position_ids, branch_t, branch_t >= 0, t[:, 0], t[:, 1], t[:, 2], t[:, 3],
                        torch.tensor(row_pair, dtype=torch.long))


def hide_keys(lay: PackedLayout, batch: TokenBatch) -> PackedLayout:
    """`lay` (built from `batch`'s pairs) with the batch's hidden keys laid out like its rows, so the
    packed rows hide exactly the tokens the plain path hides (`attention_mask: pad_id`)."""
    if batch.hidden_keys is not None:
        lay.hidden_keys = lay.to_packed(batch.hidden_keys.to("cpu").float()) != 0
    return lay


def pairs_from_batch(batch: TokenBatch) -> list[EncodedPair]:
    """The pairs of a training batch (row `2i` matching, `2i + 1` not-matching of pair `i`): the
    prompt is what precedes the first label, and it must be the same in both rows."""
    pairs = []
    lengths = batch.attention_mask.sum(dim=1).tolist()
    for i in range(len(batch) // 2):
        rows = []
        for r in (2 * i, 2 * i + 1):
            labelled = (batch.labels[r] != IGNORE_INDEX).nonzero().flatten()
            if not labelled.numel():
                raise ValueError(f"pair {i}: row {r} has no completion tokens")
            rows.append((int(labelled[0]), batch.input_ids[r, : lengths[r]].tolist()))
        (plen, first), (plen2, second) = rows
        if plen != plen2 or first[:plen] != second[:plen]:
            raise ValueError(f"pair {i}: its two rows do not share a prompt (prompt lengths {plen}, {plen2})")
        pairs.append(EncodedPair(tuple(first[:plen]), tuple(first[plen:]), tuple(second[plen:])))
    return pairs


def pair_batch(tokenizer: Any, fmt: PromptFormat, pairs: Sequence[Any], max_length: Optional[int] = None,
               hide_token_id: Optional[int] = None) -> TokenBatch:
    """Every pair's two sequences (`prompts.encode_completion`), row `2i` matching and `2i + 1` not
    matching: the rows training, CAA and the capture cache share, so equal data gives equal keys.
    `hide_token_id`: see `prompts.collate`."""
    encoded = []
    for pair in pairs:
        encoded.append(encode_completion(tokenizer, fmt, pair.question, pair.matching))
        encoded.append(encode_completion(tokenizer, fmt, pair.question, pair.not_matching))
    return collate(encoded, tokenizer.pad_token_id, max_length, hide_token_id)


def capture_template(fmt: PromptFormat, tokenizer: Any) -> str:
    """The prompt rules and chat template text a capture depends on (part of its cache key)."""
    return f"{fmt!r}\n{getattr(tokenizer, 'chat_template', None) or ''}"


def _attention_mask(lay: PackedLayout, dtype: torch.dtype, sliding_window: Optional[int] = None) -> torch.Tensor:
    """Additive 4-d mask [B, 1, S, S]: key k is visible to query q when k <= q, k is a real token
    not in `hidden_keys`, and k is prompt or on q's branch (and, for sliding layers, pos(q) - pos(k)
    < window). Padding queries see only themselves, so no softmax row is empty; a hidden token's
    query sees the earlier visible keys, as under Hugging Face's 2-d mask (position 0 is never hidden)."""
    size = lay.input_ids.shape[1]
    index = torch.arange(size)
    causal = index.view(1, size, 1) >= index.view(1, 1, size)
    bq, bk = lay.branch.unsqueeze(2), lay.branch.unsqueeze(1)
    keys = lay.valid if lay.hidden_keys is None else lay.valid & ~lay.hidden_keys
    allowed = causal & keys.unsqueeze(1) & lay.valid.unsqueeze(2) & ((bk == 0) | (bk == bq))
    if sliding_window:
        distance = lay.position_ids.unsqueeze(2) - lay.position_ids.unsqueeze(1)
        allowed &= distance < sliding_window
    allowed |= torch.eye(size, dtype=torch.bool).unsqueeze(0) & ~lay.valid.unsqueeze(2)
    mask = torch.zeros(allowed.shape, dtype=dtype)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask.unsqueeze(1)


def _model_mask(model: nn.Module, lay: PackedLayout, dtype: torch.dtype, device: torch.device) -> Any:
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


def select_rows(lay: PackedLayout, rows: torch.Tensor) -> PackedLayout:
    """The layout of a subset of rows (targets renumbered), at the same width."""
    out_row, pos, token, slot = lay.row_targets(rows)
    return PackedLayout(lay.input_ids[rows], lay.position_ids[rows], lay.branch[rows], lay.valid[rows],
                        out_row, pos, token, slot, lay.row_pair[rows],
                        None if lay.hidden_keys is None else lay.hidden_keys[rows])


def capture_layout(model: nn.Module, lay: PackedLayout, start_layer: int, reuse_prefix: bool = True) -> CapturedInputs:
    """`replay.capture_layer_inputs` for the rows of `lay`, with its masks and position ids. The
    leading columns every row shares (`shared_columns`: the chat template's prefix) run through the
    layers below `start_layer` once (`prefix_capture`; `reuse_prefix=False`: in every row)."""
    device = model_device(model)
    dtype = next(model.parameters()).dtype
    batch = TokenBatch(lay.input_ids.to(device), lay.valid.long().to(device),
                       torch.full_like(lay.input_ids, IGNORE_INDEX).to(device))
    with _inject_forward_kwargs(model, attention_mask=_model_mask(model, lay, dtype, device),
                                position_ids=lay.position_ids.to(device)):
        return capture_layer_inputs(model, batch, start_layer, shared_columns(lay) if reuse_prefix else 0)


def shared_columns(lay: PackedLayout) -> int:
    """Leading columns that are the same in every row: real tokens with the same id, position,
    branch and hiddenness (no label rule: unlike `replay_start`, the capture scores nothing)."""
    same = lay.valid.all(dim=0)
    for values in (lay.input_ids, lay.position_ids, lay.branch, lay.hidden_keys):
        if values is not None:
            same &= (values == values[:1]).all(dim=0)
    differing = (~same).nonzero()
    return int(differing[0]) if differing.numel() else lay.input_ids.shape[1]


def replay_start(lay: PackedLayout, steered: Optional[torch.Tensor] = None) -> int:
    """How many leading positions the replay can take from a one-row prefix capture: the same
    token in every row, no padding, steered in no row (`steered`: [B, S] mask, None = nowhere),
    and before every position that predicts a completion token (those must be replayed)."""
    same = (lay.input_ids == lay.input_ids[:1]).all(dim=0) & lay.valid.all(dim=0)
    if steered is not None:
        same &= ~(steered != 0).any(dim=0)
    differing = (~same).nonzero()
    length = int(differing[0]) if differing.numel() else lay.input_ids.shape[1]
    return min(length, int(lay.target_pos.min()))


def branch_positions(lay: PackedLayout, rows: torch.Tensor, branches: torch.Tensor, start: int) -> torch.Tensor:
    """Positions `[len(rows), width]` of packed `rows` to replay when only the completion of
    `branches[i]` (1 matching, 2 not-matching) is scored: the prompt from `start` on and that
    completion, each row filled up to the widest with its earliest other positions (the other
    completion, padding). The mask hides those from the prompt and the scored completion, so the
    selection holds every key they attend to (`replay.replay_hidden_at` is exact on it)."""
    end = int(lay.lengths[rows].max())
    branch = lay.branch[rows, :end]
    column = torch.arange(end)
    after = column >= start
    needed = after & ((branch == 0) | (branch == branches.unsqueeze(1)))
    count = needed.sum(dim=1)
    width = int(count.max())
    extra = after & ~needed
    keep = needed | (extra & (torch.cumsum(extra, dim=1) <= (width - count).unsqueeze(1)))
    return column.expand(len(rows), end)[keep].view(len(rows), width)


def branch_nll(
    model: nn.Module, captured: CapturedInputs, prefix: Optional[PrefixKeyValues], lay: PackedLayout,
    rows: torch.Tensor, branches: torch.Tensor, selected: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """NLL sums and token counts `[len(rows)]` of the completion `branches[i]` of packed row
    `rows[i]`, replaying only the `selected` positions (`branch_positions`); hooks fire."""
    device = captured.hidden_states.device
    hidden = replay_hidden_at(model, captured, prefix, rows.to(device), selected)
    out_row, position, token, slot = lay.row_targets(rows)
    scored = (slot % 2 + 1) == branches[out_row]
    out_row, position, token = out_row[scored], position[scored], token[scored]
    column = torch.full((len(rows), int(selected.max()) + 1), -1, dtype=torch.long)
    column.scatter_(1, selected, torch.arange(selected.shape[1]).expand_as(selected))
    where = column[out_row, position]
    if bool((where < 0).any()):
        raise ValueError("branch_nll: a position that predicts a scored token is not among the selected positions")
    run = hidden.device
    token_nll = completion_token_nll(model, hidden, out_row.to(run), where.to(run), token.to(run))
    sums = torch.zeros(len(rows), dtype=token_nll.dtype, device=run).index_add(0, out_row.to(run), token_nll)
    return sums, torch.bincount(out_row, minlength=len(rows)).to(run)
