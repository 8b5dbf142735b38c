"""generation.generate_steered: m = 0 is the plain model, m != 0 matches a hand-written steering hook."""
from __future__ import annotations

import pytest
import torch

from easyedit_split.generation import GenerationSettings, generate_steered, texts_by_multiplier
from easyedit_split.interventions import DynamicWeightUpdate
from easyedit_split.prompts import PromptFormat, steering_prefix_length
from reference import after_position, hand_steering

PROMPTS = ["Hi", "Tell me about your favourite holiday in the mountains, please."]
FMT = PromptFormat(use_chat_template=True)
LAYER = 2


@pytest.fixture
def vector(tiny_chat_model):
    generator = torch.Generator().manual_seed(3)
    # weak on purpose: strong vectors saturate the random model, and then the steered positions would not matter
    return 0.3 * torch.randn(tiny_chat_model.config.hidden_size, generator=generator)


def _ids(tokenizer, prompt):
    return tokenizer(FMT.prompt_text(tokenizer, prompt), return_tensors="pt", add_special_tokens=False)


def _plain_greedy(model, tokenizer, prompt, max_new_tokens):
    ids = _ids(tokenizer, prompt)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)


def _hand_hooked_greedy(model, tokenizer, prompt, vector, multiplier, max_new_tokens):
    """One unpadded prompt; the reference hook adds m * v to layer 2's output after the
    template's common prefix in the prompt pass and at every generated token."""
    prefix = steering_prefix_length(tokenizer, FMT)
    ids = _ids(tokenizer, prompt)
    prompt_length = ids["input_ids"].shape[1]

    def delta(x, hidden):
        if hidden.shape[1] == prompt_length:  # the prompt pass
            return multiplier * vector * after_position(prompt_length, prefix)
        return multiplier * vector  # one decoding step

    with torch.no_grad(), hand_steering(model, {LAYER: delta}):
        out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, prompt_length:], skip_special_tokens=True)


def test_multiplier_zero_is_the_plain_model(tiny_chat_model, default_tokenizer, vector):
    updates = {LAYER: DynamicWeightUpdate.from_vector(vector)}
    records = generate_steered(tiny_chat_model, default_tokenizer, PROMPTS, updates, [0.0],
                               GenerationSettings(max_new_tokens=6), FMT)
    assert [r.text for r in records] == [_plain_greedy(tiny_chat_model, default_tokenizer, p, 6) for p in PROMPTS]


def test_steered_rows_match_a_hand_written_hook(tiny_chat_model, default_tokenizer, vector):
    """Both multipliers and both prompts (padded) in one batch; each row equals its own hand-hooked run."""
    updates = {LAYER: DynamicWeightUpdate.from_vector(vector)}
    records = generate_steered(tiny_chat_model, default_tokenizer, PROMPTS, updates, [2.0, -3.0],
                               GenerationSettings(max_new_tokens=6), FMT)
    texts = texts_by_multiplier(records)
    for multiplier in (2.0, -3.0):
        expected = [_hand_hooked_greedy(tiny_chat_model, default_tokenizer, p, vector, multiplier, 6) for p in PROMPTS]
        assert texts[multiplier] == expected
    assert texts[2.0] != [_plain_greedy(tiny_chat_model, default_tokenizer, p, 6) for p in PROMPTS]
    assert default_tokenizer.padding_side == "right"  # restored


def test_records_carry_prompt_multiplier_sample_and_complete_output(tiny_chat_model, default_tokenizer, vector):
    updates = {LAYER: DynamicWeightUpdate.from_vector(vector)}
    settings = GenerationSettings(max_new_tokens=3, do_sample=True, top_p=0.9, num_samples=2, seed=7)
    records = generate_steered(tiny_chat_model, default_tokenizer, PROMPTS, updates, [0.0, 1.0], settings, FMT)
    assert [(r.sample, r.multiplier, r.prompt_index) for r in records] == [
        (s, m, i) for s in (0, 1) for m in (0.0, 1.0) for i in (0, 1)]
    for record in records:
        assert record.complete_output.startswith(FMT.prompt_text(default_tokenizer, record.prompt))
    again = generate_steered(tiny_chat_model, default_tokenizer, PROMPTS, updates, [0.0, 1.0], settings, FMT)
    assert [r.text for r in again] == [r.text for r in records]  # the seed makes sampling repeat


def test_settings_read_easyedits_generation_params():
    settings = GenerationSettings.from_params({"max_tokens": 12, "temperature": 0.5, "repetition_penalty": 1.1})
    assert settings.max_new_tokens == 12 and settings.temperature == 0.5
    greedy = settings.generate_kwargs(pad_token_id=0)
    assert greedy == {"max_new_tokens": 12, "do_sample": False, "pad_token_id": 0, "repetition_penalty": 1.1}
    with pytest.raises(ValueError, match="max_new_tokens"):
        GenerationSettings(max_new_tokens=0)
    with pytest.raises(ValueError, match="num_samples"):
        GenerationSettings.from_params({"num_return_sequences": 3})
