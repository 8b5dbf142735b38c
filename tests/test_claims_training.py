"""Trainer settings with observable effects: `max_num_of_examples` uses exactly the first N pairs,
and `output_length` that cuts a completion off is an error naming the pair and the value."""
from __future__ import annotations

import pytest
import torch

from easyedit_split.data import PolarityPair
from easyedit_split.editor import SteerEditor
from easyedit_split.errors import TrainingError
from easyedit_split.hparams import SFTHyperParams
from easyedit_split.prompts import PromptFormat, encode_completion
from easyedit_split.prepared_pairs import prepare_pairs

PAIRS = [
    PolarityPair("How was the film?", "Wonderful, I loved it.", "Awful, I hated it."),
    PolarityPair("And the food?", "Delicious and fresh!", "Cold and bland, sadly."),
    PolarityPair("Weather today?", "Sunny and bright.", "Grey, wet and gloomy."),
    PolarityPair("Your new job?", "Exciting and fun.", "Dull and tiring."),
    PolarityPair("The concert?", "Magical evening.", "Too loud, bad sound."),
]


def _hp(**values):
    return SFTHyperParams(layers=[1], n_epochs=1, batch_size=2, gradient_accumulation_steps=1, dropout=0.0, lr=0.05,
                          seed=3, **values)


def _train(model, tokenizer, pairs, hp):
    editor = SteerEditor(hp, model=model, tokenizer=tokenizer)
    return editor.train(pairs, save=False)[1].bias.detach().clone()


def test_max_num_of_examples_equals_training_on_the_first_n(tiny_chat_model, default_tokenizer):
    capped = _train(tiny_chat_model, default_tokenizer, PAIRS, _hp(max_num_of_examples=2))
    first_two = _train(tiny_chat_model, default_tokenizer, PAIRS[:2], _hp())
    last_two = _train(tiny_chat_model, default_tokenizer, PAIRS[3:], _hp())
    everything = _train(tiny_chat_model, default_tokenizer, PAIRS, _hp())
    torch.testing.assert_close(capped, first_two, rtol=0, atol=0)
    assert not torch.allclose(capped, everything) and not torch.allclose(capped, last_two)


def test_output_length_that_cuts_a_completion_names_the_pair(default_tokenizer):
    hp = _hp()
    fmt = PromptFormat.from_hparams(hp)
    lengths = [encode_completion(default_tokenizer, fmt, p.question, p.matching) for p in PAIRS[:2]]
    # hand count: long enough for pair 0's whole prompt and completion, but pair 1's prompt alone fills it
    pairs = [PAIRS[0], PolarityPair("And the food? " * 6, "Delicious and fresh!", "Cold and bland, sadly.")]
    long_prompt = encode_completion(default_tokenizer, fmt, pairs[1].question, pairs[1].matching).prompt_length
    full0 = max(len(encode_completion(default_tokenizer, fmt, PAIRS[0].question, c).input_ids)
                for c in (PAIRS[0].matching, PAIRS[0].not_matching))
    limit = max(full0, long_prompt)
    assert limit >= full0 and long_prompt >= limit and lengths
    with pytest.raises(TrainingError, match=rf"pair 1 .*output_length={limit}"):
        prepare_pairs(default_tokenizer, pairs, _hp(output_length=limit))
    prepared = prepare_pairs(default_tokenizer, [PAIRS[0]], _hp(output_length=full0))  # exactly fits: no error
    assert prepared.batch.input_ids.shape[1] == full0
