"""CAA equals the mean difference of completion-averaged layer outputs, computed by hand, under
both token sets (docs/conventions.md)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from easyedit_split.data import PolarityPair, load_dataset
from easyedit_split.hparams import CAAHyperParams, load_hparams
from easyedit_split.methods import caa
from easyedit_split.methods.caa import compute_caa_vectors
from easyedit_split.prompts import PromptFormat, encode_completion

PSYCHOPATHY = Path(__file__).parent / "fixtures" / "data" / "psychopathy_sample.jsonl"


def _hidden(model, ids, layer):
    with torch.no_grad():
        states = model(torch.tensor([ids]), output_hidden_states=True).hidden_states
    return states[layer + 1][0]  # hidden_states[0] is the embedding


def _mean_completion_hidden(model, tokenizer, question, completion, layer):
    encoded = encode_completion(tokenizer, PromptFormat(), question, completion)
    return _hidden(model, encoded.input_ids, layer)[encoded.prompt_length :].mean(0)


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma2"])
def test_caa_completion_and_suffix_matches_hand_computation(family, default_tokenizer):
    """This token set goes through the capture cache's packed rows (prompt + both completions in one
    row, the lowest layer's inputs captured once); the hand computation runs each sequence alone."""
    from conftest import build_tiny_model

    tiny_chat_model = build_tiny_model(family, vocab_size=len(default_tokenizer))
    pairs = [
        PolarityPair("How was the film?", "Wonderful, I loved it.", "Awful, I hated it."),
        PolarityPair("And the food?", "Delicious and fresh!", "Cold and bland, sadly."),
        PolarityPair("Weather today?", "Sunny and bright.", "Grey, wet and gloomy all day."),
    ]
    vectors = compute_caa_vectors(tiny_chat_model, default_tokenizer, pairs, [0, 2], batch_size=2, progress=False,
                                  token_set="completion_and_suffix")
    for layer in (0, 2):  # not the last layer: HF normalises the last hidden_states entry
        expected = torch.stack([
            _mean_completion_hidden(tiny_chat_model, default_tokenizer, p.question, p.matching, layer)
            - _mean_completion_hidden(tiny_chat_model, default_tokenizer, p.question, p.not_matching, layer)
            for p in pairs
        ]).mean(0)
        torch.testing.assert_close(vectors[layer], expected, rtol=1e-4, atol=1e-5)


def test_caa_from_easyedit_psychopathy_file_is_easyedits_rule(tiny_chat_model, default_tokenizer):
    """EasyEdit: tokens of prompt + " " + completion as stored (" Yes" -> "  Yes"), averaged from
    the prompt's token count on, no suffix. With SmolLM2's tokenizer the joint tokenization turns
    the prompt's last "\\n" into "\\n " and leaves exactly ONE answer token (" Yes" / " No"),
    counted by hand below: the vector is the mean of last-position differences."""
    pairs = load_dataset(PSYCHOPATHY)
    assert pairs[0].matching == " Yes"  # stored with the leading space
    # EasyEdit's own CAA file (no convention keys), on the tiny model's layers and with its chat template
    easyedit_file = load_hparams(Path(__file__).parent / "fixtures" / "easyedit_hparams" / "psychopathy_qwen_generate_caa.yaml")
    hparams = dataclasses.replace(easyedit_file, layers=[0, 2], use_chat_template=True)
    assert hparams.caa_token_set == "easyedit" and hparams.completion_join == "as_stored"
    vectors = caa.train(hparams, pairs, tiny_chat_model, default_tokenizer)
    fmt = PromptFormat()
    for layer in (0, 2):
        diffs = []
        for pair in pairs:
            prompt = fmt.prompt_text(default_tokenizer, pair.question)
            prompt_ids = default_tokenizer(prompt, add_special_tokens=False)["input_ids"]
            per_side = []
            for completion in (pair.matching, pair.not_matching):
                ids = default_tokenizer(prompt + " " + completion, add_special_tokens=False)["input_ids"]
                assert len(ids) == len(prompt_ids) + 1  # hand count: one answer position
                assert default_tokenizer.convert_ids_to_tokens(ids[-1]) in ("ĠYes", "ĠNo")
                per_side.append(_hidden(tiny_chat_model, ids, layer)[-1])
            diffs.append(per_side[0] - per_side[1])
        torch.testing.assert_close(vectors[layer].bias.detach(), torch.stack(diffs).mean(0), rtol=1e-4, atol=1e-5)


def test_caa_token_set_is_validated():
    from easyedit_split.errors import HparamsError

    with pytest.raises(HparamsError, match="caa_token_set"):
        CAAHyperParams(layers=[0], caa_token_set="suffix")
