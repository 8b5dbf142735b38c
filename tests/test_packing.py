"""The packed layout against layouts worked out by hand: ids, positions, branches, targets, the
4-d attention mask, the per-sequence <-> packed mapping and the replayable prefix."""
from __future__ import annotations

import torch

from easyedit_split.fastpath.packing import EncodedPair, _attention_mask, build_layout, replay_start

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
