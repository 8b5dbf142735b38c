"""No code assumes a tokenizer has a pad token: padding ids come from pad, else EOS, else 0, and the
attention mask and labels alone mark padding."""
from __future__ import annotations

import pytest
import torch

from easyedit_split.prompts import IGNORE_INDEX, EncodedCompletion, collate, pad_token_id_of


class _Ids:
    def __init__(self, pad=None, eos=None):
        self.pad_token_id, self.eos_token_id = pad, eos


@pytest.mark.parametrize("pad, eos, expected", [(5, 2, 5), (None, 2, 2), (None, [7, 2], 7), (None, None, 0), (0, 2, 0)])
def test_pad_id_falls_back_to_eos_then_zero(pad, eos, expected):
    assert pad_token_id_of(_Ids(pad, eos)) == expected


def test_collate_without_a_pad_id_masks_padding():
    rows = [EncodedCompletion([4, 5, 6, 7], 2), EncodedCompletion([8, 9, 10], 1)]
    batch = collate(rows, None)
    assert batch.input_ids.tolist() == [[4, 5, 6, 7], [8, 9, 10, 0]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    assert batch.labels.tolist() == [[IGNORE_INDEX, IGNORE_INDEX, 6, 7], [IGNORE_INDEX, 9, 10, IGNORE_INDEX]]


class _WithoutPadOrEos:
    """A real tokenizer seen without pad and EOS ids (as transformers 4 converted the default model)."""

    pad_token_id = eos_token_id = pad_token = eos_token = None

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer

    def __call__(self, *args, **kwargs):
        return self._tokenizer(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)


def test_scores_do_not_depend_on_the_pad_id(tiny_chat_model, default_tokenizer):
    """Evaluating with no pad or EOS id gives the same NLLs: padding never reaches a score."""
    from easyedit_split.data import PolarityPair
    from easyedit_split.evaluation.sweep_nll import score_pairs

    pairs = [PolarityPair("Hi", "Hello there, friend.", "Go away."), PolarityPair("How are you today?", "Fine!", "Bad.")]
    with_pad = score_pairs(tiny_chat_model, default_tokenizer, pairs, {}, [0.0], layout="rows")
    without = score_pairs(tiny_chat_model, _WithoutPadOrEos(default_tokenizer), pairs, {}, [0.0], layout="rows")
    assert torch.equal(torch.as_tensor(with_pad.matching_nll), torch.as_tensor(without.matching_nll))
    assert torch.equal(torch.as_tensor(with_pad.not_matching_nll), torch.as_tensor(without.not_matching_nll))
