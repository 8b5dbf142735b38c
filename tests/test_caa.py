"""CAA equals the mean difference of completion-averaged layer outputs, computed by hand."""
from __future__ import annotations

import torch

from easyedit_split.data import PolarityPair
from easyedit_split.methods.caa import compute_caa_vectors
from easyedit_split.prompts import PromptFormat, encode_completion


def _mean_completion_hidden(model, tokenizer, question, completion, layer):
    encoded = encode_completion(tokenizer, PromptFormat(), question, completion)
    with torch.no_grad():
        states = model(torch.tensor([encoded.input_ids]), output_hidden_states=True).hidden_states
    return states[layer + 1][0, encoded.prompt_length :].mean(0)  # hidden_states[0] is the embedding


def test_caa_matches_hand_computation(tiny_chat_model, default_tokenizer):
    pairs = [
        PolarityPair("How was the film?", "Wonderful, I loved it.", "Awful, I hated it."),
        PolarityPair("And the food?", "Delicious and fresh!", "Cold and bland, sadly."),
        PolarityPair("Weather today?", "Sunny and bright.", "Grey, wet and gloomy all day."),
    ]
    vectors = compute_caa_vectors(tiny_chat_model, default_tokenizer, pairs, [0, 2], batch_size=2, progress=False)
    for layer in (0, 2):  # not the last layer: HF normalises the last hidden_states entry
        expected = torch.stack([
            _mean_completion_hidden(tiny_chat_model, default_tokenizer, p.question, p.matching, layer)
            - _mean_completion_hidden(tiny_chat_model, default_tokenizer, p.question, p.not_matching, layer)
            for p in pairs
        ]).mean(0)
        torch.testing.assert_close(vectors[layer], expected, rtol=1e-4, atol=1e-5)
