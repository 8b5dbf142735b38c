"""packing.py: the packed prompt-sharing layout against layouts worked out by hand: ids, positions,
branches, targets, the 4-d attention mask, the per-sequence <-> packed mapping and the replayable prefix.

The two pairs most tests use, written out token by token:

    pair 0: prompt (5, 6)   matching (7, 8)   not-matching (9,)
    pair 1: prompt (10,)    matching (11,)    not-matching (12, 13)

Packed (one row per pair, right-padded to 5; branch 0 prompt, 1 matching, 2 not-matching, -1 pad):

    row 0: ids 5 6 7 8 9      positions 0 1 2 3 2   branch 0 0 1 1 2
    row 1: ids 10 11 12 13 0  positions 0 1 1 2 3   branch 0 1 2 2 -1

A completion token at logical position p is predicted by the packed column holding logical
position p - 1 on its own branch or the prompt: the first token of each completion by the last
prompt column, the next ones by the previous column of the same completion.
"""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from easyedit_split.fastpath.packing import EncodedPair, _attention_mask, build_layout, replay_start
from conftest import build_tiny_model
from easyedit_split.fastpath import packing
from easyedit_split.fastpath.packing import pairs_from_batch
from easyedit_split.prompts import IGNORE_INDEX, TokenBatch


PAIRS = [EncodedPair((5, 6), (7, 8), (9,)), EncodedPair((10,), (11,), (12, 13))]
OK, NO = 1, 0


def test_packed_layout_by_hand():
    lay = build_layout(PAIRS, "packed", pad_id=0)
    assert lay.input_ids.tolist() == [[5, 6, 7, 8, 9], [10, 11, 12, 13, 0]]
    assert lay.position_ids.tolist() == [[0, 1, 2, 3, 2], [0, 1, 1, 2, 3]]
    assert lay.branch.tolist() == [[0, 0, 1, 1, 2], [0, 1, 2, 2, -1]]
    assert lay.valid.tolist() == [[True] * 5, [True] * 4 + [False]]
    assert lay.lengths.tolist() == [5, 4] and len(lay) == 2
    assert lay.target_row.tolist() == [0, 0, 0, 1, 1, 1]
    assert lay.target_pos.tolist() == [1, 2, 1, 0, 0, 2]
    assert lay.target_token.tolist() == [7, 8, 9, 11, 12, 13]
    assert lay.target_slot.tolist() == [0, 0, 1, 2, 3, 3]
    assert lay.row_pair.tolist() == [0, 1]
    assert lay.input_ids.dtype == lay.position_ids.dtype == lay.target_pos.dtype == torch.long
    assert build_layout(PAIRS, "packed", pad_id=7).input_ids[1, 4] == 7
    assert torch.equal(build_layout(PAIRS).branch, lay.branch)  # packed by default


def test_rows_layout_by_hand():
    lay = build_layout(PAIRS, "rows", pad_id=0)
    assert lay.input_ids.tolist() == [[5, 6, 7, 8], [5, 6, 9, 0], [10, 11, 0, 0], [10, 12, 13, 0]]
    assert lay.position_ids.tolist() == [[0, 1, 2, 3]] * 4  # padding continues the positions
    assert lay.branch.tolist() == [[0, 0, 1, 1], [0, 0, 2, -1], [0, 1, -1, -1], [0, 2, 2, -1]]
    assert lay.target_row.tolist() == [0, 0, 1, 2, 3, 3]
    assert lay.target_pos.tolist() == [1, 2, 1, 0, 0, 1]
    assert lay.target_token.tolist() == [7, 8, 9, 11, 12, 13]
    assert lay.target_slot.tolist() == [0, 0, 1, 2, 3, 3]
    assert lay.row_pair.tolist() == [0, 0, 1, 1]


def test_bad_layouts_and_pairs_are_named():
    with pytest.raises(ValueError, match="layout: 'tree' is not one of"):
        build_layout(PAIRS, "tree")
    with pytest.raises(ValueError, match=r"^a pair needs at least one prompt token \(the first completion token is "
                                         r"predicted from it\)$"):
        EncodedPair((), (1,), (2,))
    with pytest.raises(ValueError, match="^a completion tokenizes to nothing$"):
        EncodedPair((1,), (), (2,))
    with pytest.raises(ValueError, match="tokenizes to nothing"):
        EncodedPair((1,), (2,), ())


def test_row_targets_of_a_selection_with_repeats():
    lay = build_layout(PAIRS, "packed")
    out_row, position, token, slot = lay.row_targets(torch.tensor([1, 0, 1]))
    assert out_row.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert position.tolist() == [0, 0, 2, 1, 2, 1, 0, 0, 2]
    assert token.tolist() == [11, 12, 13, 7, 8, 9, 11, 12, 13]
    assert slot.tolist() == [2, 3, 3, 0, 0, 1, 2, 3, 3]
    sub = packing.select_rows(lay, torch.tensor([1]))
    assert sub.input_ids.tolist() == [[10, 11, 12, 13, 0]] and sub.row_pair.tolist() == [1]
    assert sub.position_ids.tolist() == [[0, 1, 1, 2, 3]] and sub.valid.tolist() == [[True] * 4 + [False]]
    assert sub.branch.tolist() == [[0, 1, 2, 2, -1]]
    assert (sub.target_row.tolist(), sub.target_pos.tolist(), sub.target_token.tolist(), sub.target_slot.tolist()) == (
        [0, 0, 0], [0, 0, 2], [11, 12, 13], [2, 3, 3])


# per-sequence values (rows: pair 0 matching, pair 0 not-matching, pair 1 matching, pair 1 not-matching)
SEQUENCE_VALUES = torch.tensor([[1.0, 2.0, 10.0, 11.0], [1.0, 2.0, 20.0, 0.0], [3.0, 30.0, 0.0, 0.0],
                                [3.0, 40.0, 41.0, 0.0]])


def test_to_packed_by_hand_and_back():
    lay = build_layout(PAIRS, "packed")
    packed = lay.to_packed(SEQUENCE_VALUES)
    assert packed.tolist() == [[1, 2, 10, 11, 20], [3, 30, 40, 41, 0]]
    back = lay.to_sequences(packed[[0, 1, 0, 1]], torch.tensor([0, 1, 0, 1]), torch.tensor([1, 1, 2, 2]), 4)
    assert back.tolist() == SEQUENCE_VALUES[[0, 2, 1, 3]].tolist()
    narrow = lay.to_sequences(packed[[1, 0]], torch.tensor([1, 0]), torch.tensor([2, 1]), 2)
    assert narrow.tolist() == [[3, 40], [1, 2]]
    # values (one packed row per selected row) covering only the first 3 packed columns
    first = lay.to_sequences(packed[[0, 1], :3], torch.tensor([0, 1]), torch.tensor([2, 2]), 4)
    assert first.tolist() == [[1, 2, 0, 0], [3, 40, 0, 0]]
    differing = SEQUENCE_VALUES.clone()
    differing[1, 1] = 5.0  # pair 0's two sequences disagree on prompt position 1
    with pytest.raises(ValueError, match="^the two sequences of a pair differ on prompt positions; they cannot share one "
                                         "prompt pass$"):
        lay.to_packed(differing)
    exact = lay.to_sequences(packed.double()[[0]], torch.tensor([0]), torch.tensor([1]), 4)
    assert exact.dtype == torch.float64 and exact.tolist() == [[1, 2, 10, 11]]  # values keep their dtype


def test_to_packed_clamps_padding_positions_past_the_sequence_width():
    """Pair 1 is short: its padding's positions (2..5) run past the 4 sequence columns; they read 0."""
    lay = build_layout([EncodedPair((5,), (6, 7, 8), (9, 10, 11)), EncodedPair((3,), (4,), (2,))], "packed")
    assert lay.position_ids[1].tolist() == [0, 1, 1, 2, 3, 4, 5]
    values = torch.tensor([[1.0, 2, 3, 4], [1, 5, 6, 7], [8, 9, 0, 0], [8, 10, 0, 0]])
    out_row, position, token, slot = lay.row_targets(torch.tensor([1]))  # rows of 6 and 2 targets
    assert (out_row.tolist(), position.tolist(), token.tolist(), slot.tolist()) == ([0, 0], [0, 0], [4, 2], [2, 3])
    assert lay.to_packed(values).tolist() == [[1, 2, 3, 4, 5, 6, 7], [8, 9, 10, 0, 0, 0, 0]]


def test_pairs_from_batch_and_its_errors():
    ids = torch.tensor([[5, 6, 7, 8], [5, 6, 9, 0], [10, 11, 0, 0], [10, 12, 13, 0]])
    mask = (ids != 0).long()
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[0, 2:4], labels[1, 2], labels[2, 1], labels[3, 1:3] = ids[0, 2:4], ids[1, 2], ids[2, 1], ids[3, 1:3]
    assert pairs_from_batch(TokenBatch(ids, mask, labels)) == PAIRS
    unlabelled = labels.clone()
    unlabelled[3] = IGNORE_INDEX
    with pytest.raises(ValueError, match="pair 1: row 3 has no completion tokens"):
        pairs_from_batch(TokenBatch(ids, mask, unlabelled))
    other_prompt = ids.clone()
    other_prompt[3, 0] = 14
    with pytest.raises(ValueError, match=r"pair 1: its two rows do not share a prompt \(prompt lengths 1, 1\)"):
        pairs_from_batch(TokenBatch(other_prompt, mask, labels))
    longer = labels.clone()
    longer[1, 2] = IGNORE_INDEX  # row 1's completion would start at 3: the prompts' lengths differ
    longer[1, 3] = 4
    mask2 = mask.clone()
    mask2[1, 3] = 1
    with pytest.raises(ValueError, match=r"prompt lengths 2, 3"):
        pairs_from_batch(TokenBatch(ids, mask2, longer))


def test_attention_mask_of_the_two_pairs_by_hand():
    lay = build_layout(PAIRS, "packed")
    mask = packing._attention_mask(lay, torch.float32)
    assert mask.shape == (2, 1, 5, 5)
    allowed = (mask[:, 0] == 0).long().tolist()
    assert allowed[0] == [[1, 0, 0, 0, 0],   # prompt sees the prompt, causally
                          [1, 1, 0, 0, 0],
                          [1, 1, 1, 0, 0],   # matching sees prompt + matching
                          [1, 1, 1, 1, 0],
                          [1, 1, 0, 0, 1]]   # not-matching: prompt and itself, never the matching tokens
    assert allowed[1] == [[1, 0, 0, 0, 0],
                          [1, 1, 0, 0, 0],
                          [1, 0, 1, 0, 0],
                          [1, 0, 1, 1, 0],
                          [0, 0, 0, 0, 1]]   # padding sees only itself
    assert mask.min() == torch.finfo(torch.float32).min and mask.dtype == torch.float32
    bf16 = packing._attention_mask(lay, torch.bfloat16)
    assert bf16.dtype == torch.bfloat16 and bf16.min() == torch.finfo(torch.bfloat16).min
    sliding = (packing._attention_mask(lay, torch.float32, sliding_window=2)[:, 0] == 0).long().tolist()
    assert sliding[0] == [[1, 0, 0, 0, 0],
                          [1, 1, 0, 0, 0],
                          [0, 1, 1, 0, 0],   # position 2 sees positions 1, 2 (distance < 2)
                          [0, 0, 1, 1, 0],
                          [0, 1, 0, 0, 1]]   # the not-matching token is at logical position 2
    assert sliding[1] == [[1, 0, 0, 0, 0],
                          [1, 1, 0, 0, 0],
                          [1, 0, 1, 0, 0],
                          [0, 0, 1, 1, 0],
                          [0, 0, 0, 0, 1]]


def test_model_mask_per_attention_type():
    lay = build_layout(PAIRS, "packed")
    full = packing._attention_mask(lay, torch.float32)
    plain = SimpleNamespace(config=SimpleNamespace())
    assert torch.equal(packing._model_mask(plain, lay, torch.float32, torch.device("cpu")), full)
    typed = SimpleNamespace(config=SimpleNamespace(layer_types=["sliding_attention", "full_attention"],
                                                   sliding_window=2))
    masks = packing._model_mask(typed, lay, torch.float32, torch.device("cpu"))
    assert torch.equal(masks["full_attention"], full)
    assert torch.equal(masks["sliding_attention"], packing._attention_mask(lay, torch.float32, 2))
    assert not torch.equal(masks["sliding_attention"], full)
    nested = SimpleNamespace(config=SimpleNamespace(text_config=SimpleNamespace(layer_types=["full_attention"])))
    masks = packing._model_mask(nested, lay, torch.float32, torch.device("cpu"))
    assert torch.equal(masks["sliding_attention"], full) and torch.equal(masks["full_attention"], full)


def test_replay_start_by_hand():
    shared = [EncodedPair((3, 4, 5), (7,), (8,)), EncodedPair((3, 4, 6), (9, 1), (2,))]
    lay = build_layout(shared, "packed")
    assert replay_start(lay) == 2  # tokens 3, 4 in every row; position 2 differs
    steered = torch.zeros_like(lay.input_ids)
    steered[1, 1] = 1
    assert replay_start(lay, steered) == 1
    assert replay_start(lay, steered.float() * 0) == 2
    same_prompt = build_layout([EncodedPair((3, 4), (7,), (8,)), EncodedPair((3, 4), (9,), (2,))], "packed")
    assert replay_start(same_prompt) == 1  # position 1 predicts the first completion token: replayed
    one_row = build_layout([EncodedPair((3, 4, 5), (7,), (8,))], "packed")
    assert replay_start(one_row) == 2
    early = build_layout([EncodedPair((3, 4, 5, 6), (7,), (8,)), EncodedPair((3, 9, 5, 6), (7,), (8,))], "packed")
    assert replay_start(early) == 1  # every row is real at position 1, but its tokens differ there
    assert replay_start(early, torch.zeros_like(early.input_ids)) == 1  # nothing steered: still the tokens decide
    padded = build_layout([EncodedPair((3,), (7, 7, 7), (8,)), EncodedPair((3,), (7, 7, 7), (8, 8, 8))], "packed")
    assert replay_start(padded) == 0  # capped by the first target position (0)


@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_completion_token_nll_is_minus_log_softmax_of_the_model(family):
    model = build_tiny_model(family)
    ids = torch.tensor([[5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 15, 16]])
    captured = {}
    handle = model.model.norm.register_forward_pre_hook(lambda m, args: captured.__setitem__("h", args[0]))
    try:
        with torch.no_grad():
            logits = model(ids).logits
    finally:
        handle.remove()
    logp = torch.log_softmax(logits.float(), dim=-1)
    rows = torch.tensor([0, 1, 1, 0, 1])
    positions = torch.tensor([2, 0, 4, 5, 3])
    tokens = torch.tensor([7, 3, 50, 1, 96])
    with torch.no_grad():
        got = packing.completion_token_nll(model, captured["h"], rows, positions, tokens, slice_size=2)
    expected = torch.stack([-logp[r, p, t] for r, p, t in zip(rows, positions, tokens)])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_captured_packed_inputs_equal_each_sequence_alone(family):
    """The layer-2 inputs captured for a packed row equal, position by position, those of each
    sequence run alone: masks and position ids make every token see what it sees in its own sequence
    (gemma2: sliding window 4 reached by positions up to 7)."""
    model = build_tiny_model(family)
    pairs = [EncodedPair((5, 6, 7, 8, 9), (20, 21, 22), (30, 31)), EncodedPair((11, 12), (40,), (50, 51, 52, 53, 54))]
    lay = build_layout(pairs, "packed")
    captured = packing.capture_layout(model, lay, 2)
    assert captured.start_layer == 2 and captured.hidden_states.shape[:2] == (2, 10)

    def alone(ids):
        seen = {}
        handle = model.model.layers[2].register_forward_pre_hook(
            lambda m, args, kwargs: seen.__setitem__("h", (args[0] if args else kwargs["hidden_states"])),
            with_kwargs=True)
        try:
            with torch.no_grad():
                model(torch.tensor([ids]))
        finally:
            handle.remove()
        return seen["h"][0]

    for row, pair in enumerate(pairs):
        plen = len(pair.prompt_ids)
        matching = alone(list(pair.prompt_ids + pair.matching_ids))
        not_matching = alone(list(pair.prompt_ids + pair.not_matching_ids))
        h = captured.hidden_states[row]
        m, n = len(pair.matching_ids), len(pair.not_matching_ids)
        torch.testing.assert_close(h[: plen + m], matching, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(h[plen + m : plen + m + n], not_matching[plen:], rtol=1e-5, atol=1e-5)


# prompt | matching | not matching
A = EncodedPair((5, 6, 7), (8, 9), (10,))
B = EncodedPair((5, 11), (12,), (13, 14, 15))
C = EncodedPair((5,), (16,), (17,))


def test_packed_rows_by_hand():
    lay = build_layout([A, B, C], "packed", pad_id=0)
    assert lay.input_ids.tolist() == [[5, 6, 7, 8, 9, 10], [5, 11, 12, 13, 14, 15], [5, 16, 17, 0, 0, 0]]
    # the not-matching completion restarts where the prompt ends; padding continues after the last token
    assert lay.position_ids.tolist() == [[0, 1, 2, 3, 4, 3], [0, 1, 2, 2, 3, 4], [0, 1, 1, 2, 3, 4]]
    assert lay.branch.tolist() == [[0, 0, 0, 1, 1, 2], [0, 0, 1, 2, 2, 2], [0, 1, 2, -1, -1, -1]]
    assert lay.lengths.tolist() == [6, 6, 3]
    assert lay.row_pair.tolist() == [0, 1, 2]
    # (row, index that predicts, token, slot = 2 * pair + side): each completion's first token is
    # predicted from the prompt's last index, the rest from their own previous index
    targets = list(zip(lay.target_row.tolist(), lay.target_pos.tolist(), lay.target_token.tolist(),
                       lay.target_slot.tolist()))
    assert targets == [
        (0, 2, 8, 0), (0, 3, 9, 0), (0, 2, 10, 1),
        (1, 1, 12, 2), (1, 1, 13, 3), (1, 3, 14, 3), (1, 4, 15, 3),
        (2, 0, 16, 4), (2, 0, 17, 5),
    ]


def test_rows_layout_puts_each_completion_in_its_own_row():
    lay = build_layout([A, B], "rows", pad_id=0)
    assert lay.input_ids.tolist() == [[5, 6, 7, 8, 9], [5, 6, 7, 10, 0], [5, 11, 12, 0, 0], [5, 11, 13, 14, 15]]
    assert lay.row_pair.tolist() == [0, 0, 1, 1]
    assert list(zip(lay.target_row.tolist(), lay.target_pos.tolist(), lay.target_slot.tolist())) == [
        (0, 2, 0), (0, 3, 0), (1, 2, 1), (2, 1, 2), (3, 1, 3), (3, 2, 3), (3, 3, 3)]


def test_attention_mask_by_hand():
    lay = build_layout([A, C], "packed", pad_id=0)
    allowed = _attention_mask(lay, torch.float32)[:, 0] == 0
    row_a = [  # the not-matching token (index 5) sees the prompt and itself, never the matching tokens
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 0, 0],
        [1, 1, 1, 1, 1, 0],
        [1, 1, 1, 0, 0, 1],
    ]
    row_c = [  # padding queries (3..5) see only themselves, so no softmax row is empty
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 0, 1, 0, 0, 0],
        [0, 0, 0, 1, 0, 0],
        [0, 0, 0, 0, 1, 0],
        [0, 0, 0, 0, 0, 1],
    ]
    assert allowed.long().tolist() == [row_a, row_c]


def test_sliding_window_mask_counts_logical_positions():
    lay = build_layout([A], "packed", pad_id=0)
    allowed = _attention_mask(lay, torch.float32, sliding_window=2)[0, 0] == 0
    # index 5 (not matching, logical position 3) sees logical positions 2 and 3 only: index 2 and itself
    assert allowed[5].long().tolist() == [0, 0, 1, 0, 0, 1]
    # index 4 (matching, logical position 4) sees logical positions 3 and 4: indices 3 and 4
    assert allowed[4].long().tolist() == [0, 0, 0, 1, 1, 0]


def test_to_packed_and_back_keep_each_sequence_s_values():
    lay = build_layout([A, B, C], "packed", pad_id=0)
    plen = [3, 2, 1]
    # value = 100 * pair + 10 * (not-matching side, completion positions only) + position
    values = torch.zeros(6, 6)
    for pair in range(3):
        for side in range(2):
            for position in range(6):
                values[2 * pair + side, position] = 100 * pair + (10 * side if position >= plen[pair] else 0) + position
    packed = lay.to_packed(values)
    assert packed.tolist() == [[0, 1, 2, 3, 4, 13], [100, 101, 102, 112, 113, 114], [200, 201, 211, 0, 0, 0]]
    rows = torch.tensor([0, 0, 1, 1])  # the values of a selection of packed rows, one per selected row
    back = lay.to_sequences(packed[rows], rows, torch.tensor([1, 2, 1, 2]), 5)
    assert back.tolist() == [[0, 1, 2, 3, 4], [0, 1, 2, 13, 0], [100, 101, 102, 0, 0], [100, 101, 112, 113, 114]]


def test_to_packed_refuses_sequences_that_disagree_on_the_prompt():
    lay = build_layout([A], "packed", pad_id=0)
    values = torch.ones(2, 6)
    values[1, 1] = 0.0  # prompt position 1 steered in one sequence only
    try:
        lay.to_packed(values)
    except ValueError as error:
        assert "prompt" in str(error)
    else:
        raise AssertionError("a prompt that differs between the two sequences must be refused")


def test_replay_start_stops_at_the_first_difference_the_first_steered_position_and_the_first_predictor():
    lay = build_layout([A, B, C], "packed", pad_id=0)
    assert replay_start(lay) == 0  # C's completion is predicted from index 0
    lay = build_layout([A, B], "packed", pad_id=0)
    assert replay_start(lay) == 1  # index 1 differs (6 vs 11)
    one = build_layout([A], "packed", pad_id=0)
    assert replay_start(one) == 2  # all indices agree; index 2 predicts the first completion token
    steered = torch.zeros(1, 6)
    steered[0, 1:] = 1
    assert replay_start(one, steered) == 1  # a steered index must be replayed
    two = build_layout([A, EncodedPair((5, 6, 7), (30,), (31,))], "packed", pad_id=0)
    steered = torch.zeros(2, 6)
    steered[1, 1:] = 1  # steered in the second row only: still not shareable
    assert replay_start(two) == 2 and replay_start(two, steered) == 1
    padded = build_layout([A, EncodedPair((5, 6, 7, 20), (21,), (22,))], "packed", pad_id=0)
    assert replay_start(padded) == 2  # index 3 differs, but index 2 predicts A's first completion token
