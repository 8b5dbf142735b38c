"""LocalJudge: a transformers chat model as judge (tiny random model; the default model end to end)."""
from __future__ import annotations

import logging

import pytest

from easyedit_split.judging import JudgeItem, LocalJudge, make_judge, rate_items
import torch

from easyedit_split.judging.backends import EXPECTED_MARK, FORCED_MARK, JudgeConfigError
from easyedit_split.judging.parsing import parse_rating

logger = logging.getLogger(__name__)

ITEM = JudgeItem("The waves crashed on the sandy shore.", "Describe a morning at the beach.", "the ocean")


def test_tiny_model_judge_returns_text_and_is_deterministic(tiny_chat_model, default_tokenizer):
    judge = LocalJudge(tiny_chat_model, default_tokenizer, max_new_tokens=6, batch_size=3, model_id="local:tiny")
    rated = rate_items(judge, [ITEM], progress=False)
    for name, detail in rated[0].details.items():
        assert isinstance(detail.answer, str)
        assert detail.rating == parse_rating(detail.answer)  # None (missing) is allowed, 0 is never invented
        assert detail.asks == 1  # greedy: an unparseable answer is not asked again
    prompts = ["Rate this: hello.", "Rate this: a much longer text that needs more tokens than the first one."]
    together = judge.generate_batch(prompts)
    assert together == [judge.generate_batch([prompt])[0] for prompt in prompts]  # left padding is harmless


@pytest.mark.parametrize("digit,max_new_tokens", [(0, 4), (1, 4), (2, 4), (1, 0)])
def test_forced_rating_takes_the_judges_most_likely_digit(tiny_chat_model, default_tokenizer, digit, max_new_tokens):
    digit_id = default_tokenizer(str(digit), add_special_tokens=False)["input_ids"][0]

    def favour_digit(module, inputs, output):
        output[..., digit_id] += 1000.0
        return output

    handle = tiny_chat_model.lm_head.register_forward_hook(favour_digit)
    try:
        judge = LocalJudge(tiny_chat_model, default_tokenizer, max_new_tokens=max_new_tokens, force_rating="argmax")
        answer = judge.generate_batch(["Rate this text: hello."])[0]
    finally:
        handle.remove()
    assert answer.endswith(f"Rating: {digit} {FORCED_MARK}")
    assert parse_rating(answer) == float(digit)
    assert judge.model_id.endswith(":forced-argmax")


def test_expected_rating_is_the_probability_weighted_digit(tiny_chat_model, default_tokenizer):
    ids = [default_tokenizer(str(d), add_special_tokens=False)["input_ids"][0] for d in range(3)]
    boosts = torch.tensor([0.0, 1.0, 2.0])  # digit logits set to 1000 + boosts: p(d) = softmax(boosts)

    def set_digits(module, inputs, output):
        output[..., ids] = 1000.0 + boosts
        return output

    handle = tiny_chat_model.lm_head.register_forward_hook(set_digits)
    try:
        judge = LocalJudge(tiny_chat_model, default_tokenizer, max_new_tokens=0, force_rating="expected")
        answer = judge.generate_batch(["Rate this text: hello."])[0]
    finally:
        handle.remove()
    e = torch.exp(torch.tensor([0.0, 1.0, 2.0]))
    by_hand = float((e[1] * 1 + e[2] * 2) / e.sum())  # 1.5761
    assert answer.endswith(EXPECTED_MARK)
    assert parse_rating(answer) == pytest.approx(by_hand, abs=2e-3)


def test_local_judge_needs_a_model():
    with pytest.raises(JudgeConfigError, match="model_name_or_path"):
        LocalJudge()
    with pytest.raises(JudgeConfigError, match="local:MODEL_OR_PATH"):
        make_judge("local:")


def test_rating_only_mode_needs_forcing(tiny_chat_model, default_tokenizer):
    with pytest.raises(JudgeConfigError, match="max_new_tokens=0 needs"):
        LocalJudge(tiny_chat_model, default_tokenizer, max_new_tokens=0)
    with pytest.raises(JudgeConfigError, match="force_rating must be one of"):
        LocalJudge(tiny_chat_model, default_tokenizer, force_rating="yes")


@pytest.mark.default_model
def test_default_model_as_judge_runs_end_to_end(default_model_and_tokenizer, record_property):
    """Only checks that the pipeline runs; what a 135M judge says is recorded, not asserted."""
    model, tokenizer = default_model_and_tokenizer
    judge = LocalJudge(model, tokenizer, model_name_or_path="smollm2-135m-instruct", max_new_tokens=24,
                       batch_size=3)
    rated = rate_items(judge, [ITEM], progress=False)
    for name, detail in rated[0].details.items():
        assert isinstance(detail.answer, str) and detail.answer
        record_property(f"default_judge_{name}", detail.answer)
        logger.info("default judge, %s: rating %s, answer %r", name, detail.rating, detail.answer)
    forced = LocalJudge(model, tokenizer, model_name_or_path="smollm2-135m-instruct", max_new_tokens=24,
                        batch_size=3, force_rating="expected")
    rated_forced = rate_items(forced, [ITEM], progress=False)
    assert all(0.0 <= rating <= 2.0 for rating in rated_forced[0].ratings.values())
    record_property("default_judge_forced_ratings", rated_forced[0].ratings)
