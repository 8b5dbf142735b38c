"""distinct-n against hand counts; perplexity against a prefix-by-prefix hand computation on a tiny Llama."""
from __future__ import annotations

import math

import pytest
import torch

from easyedit_split.generation_eval import text_metrics
from easyedit_split.generation_eval.text_metrics import completion_nlls, distinct_1_2_3, distinct_n, perplexities, perplexity
from conftest import build_tiny_model
from easyedit_split.judging.prefix_reuse import PrefixKV


def test_distinct_n_by_hand():
    text = "the cat saw the cat"
    # unigrams: the cat saw the cat -> 3 distinct of 5; bigrams: (the cat)(cat saw)(saw the)(the cat) -> 3 of 4
    # trigrams: (the cat saw)(cat saw the)(saw the cat) -> 3 of 3
    assert distinct_1_2_3(text) == {"distinct_1": 3 / 5, "distinct_2": 3 / 4, "distinct_3": 1.0}
    # EasyEdit's normalisation: distinct n-grams over words
    assert distinct_n(text, 2, normalize_by="words") == 3 / 5
    # pooled over texts: "a b" + "a b" -> unigrams {a, b} of 4, bigrams {(a b)} of 2
    assert distinct_n(["a b", "a b"], 1) == 0.5 and distinct_n(["a b", "a b"], 2) == 0.5
    assert distinct_n("loop loop loop loop", 1) == 0.25


def test_distinct_n_of_too_short_text_is_missing_not_zero():
    assert distinct_n("", 1) is None
    assert distinct_n("one two", 3) is None
    with pytest.raises(ValueError):
        distinct_n("a b", 0)


def hand_perplexity(model, prompt, completion):
    """One forward pass per completion token on the bare prefix, no padding, no masks."""
    total = 0.0
    for j, token in enumerate(completion):
        prefix = torch.tensor([prompt + completion[:j]])
        with torch.no_grad():
            logits = model(prefix).logits[0, -1].double()
        total -= torch.log_softmax(logits, dim=-1)[token].item()
    return math.exp(total / len(completion))


def test_perplexity_matches_a_hand_computation_and_ignores_prompt_tokens():
    model = build_tiny_model("llama", seed=3)
    rows = [([1, 5, 9], [12, 40, 7, 7]), ([1, 30], [2]), ([1, 4, 4, 4, 8, 60], [11, 12])]
    nlls = completion_nlls(model, [p for p, _ in rows], [c for _, c in rows], pad_token_id=0, batch_size=2)
    for (prompt, completion), (nll, count) in zip(rows, nlls):
        assert count == len(completion)
        assert math.exp(nll / count) == pytest.approx(hand_perplexity(model, prompt, completion), rel=1e-4)
    # prompt tokens are context only: the same completion after another prompt scores differently,
    # and changing only the prompt's length does not change the token count
    other = completion_nlls(model, [[1, 6]], [rows[0][1]])[0]
    assert other[1] == 4 and other[0] != pytest.approx(nlls[0][0])


def test_text_interface_and_empty_completion(default_tokenizer, tiny_chat_model):
    prompt, completion = "Hello there.", " How are you today?"
    got = perplexity(tiny_chat_model, default_tokenizer, prompt, completion)
    prompt_ids = default_tokenizer(prompt, add_special_tokens=False)["input_ids"]
    completion_ids = default_tokenizer(completion, add_special_tokens=False)["input_ids"]
    assert got == pytest.approx(hand_perplexity(tiny_chat_model, prompt_ids, completion_ids), rel=1e-4)
    assert perplexities(tiny_chat_model, default_tokenizer, [prompt, prompt], ["", completion])[0] is None


@pytest.mark.parametrize("family", ["qwen2", "gemma2"])
def test_perplexity_matches_the_full_forward_in_other_families(family):
    """The LM head at completion positions only (Gemma-2's final soft cap applied) equals the full forward."""
    model = build_tiny_model(family, seed=4)
    rows = [([1, 5, 9], [12, 40, 7, 7]), ([1, 4, 4, 4, 8, 60], [11, 12])]
    nlls = completion_nlls(model, [p for p, _ in rows], [c for _, c in rows], pad_token_id=0, batch_size=2)
    for (prompt, completion), (nll, count) in zip(rows, nlls):
        assert math.exp(nll / count) == pytest.approx(hand_perplexity(model, prompt, completion), rel=1e-4)


def test_head_runs_at_completion_positions_and_repeated_texts_are_scored_once(default_tokenizer, tiny_chat_model):
    seen: list[int] = []
    handle = tiny_chat_model.lm_head.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
    prompts, completions = ["Hello there.", "Hello there.", "Hi."], [" How are you?", " How are you?", " Fine."]
    try:
        got = perplexities(tiny_chat_model, default_tokenizer, prompts, completions)
    finally:
        handle.remove()
    tokens = [len(default_tokenizer(c, add_special_tokens=False)["input_ids"]) for c in completions]
    assert seen == [tokens[0] + tokens[2]]  # one forward, head rows = completion tokens of the 2 distinct pairs
    assert got[0] == got[1]
    for prompt, completion, value in zip(prompts, completions, got):
        prompt_ids = default_tokenizer(prompt, add_special_tokens=False)["input_ids"]
        completion_ids = default_tokenizer(completion, add_special_tokens=False)["input_ids"]
        assert value == pytest.approx(hand_perplexity(tiny_chat_model, prompt_ids, completion_ids), rel=1e-4)


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma2"])
def test_shared_prompts_run_once_and_give_the_full_forward_values(family, monkeypatch):
    """Prompts shared by several completions (a header all share, each question shared by four
    completions): their tokens run once (`prefix_reuse`), and every NLL equals the hand computation
    and the whole-row path."""
    made: list[PrefixKV] = []

    class Counted(PrefixKV):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(text_metrics, "PrefixKV", Counted)
    model = build_tiny_model(family, seed=5)
    header = list(range(3, 21))                        # 18 tokens every prompt shares
    questions = [list(range(40, 49)), list(range(50, 60))]  # long enough to pay for their own pass
    completions = [[60, 61, 62], [60, 61, 70, 71], [80], [90, 91]]
    prompts = [[1] + header + q for q in questions for _ in completions]
    rows = [c for _ in questions for c in completions]
    reused = completion_nlls(model, prompts, rows, pad_token_id=0, batch_size=3)
    whole = completion_nlls(model, prompts, rows, pad_token_id=0, batch_size=3, reuse_prefix=False)
    for prompt, completion, (nll, count), (nll_whole, count_whole) in zip(prompts, rows, reused, whole):
        assert count == count_whole == len(completion)
        assert math.exp(nll / count) == pytest.approx(hand_perplexity(model, prompt, completion), rel=1e-4)
        assert nll == pytest.approx(nll_whole, rel=1e-5, abs=1e-5)
    prefixes = made[0]
    if family == "gemma2":  # its sliding window (4) is shorter than the rows: they run whole, as they must
        assert prefixes.prefix_tokens_run == prefixes.suffix_tokens_run == 0
        return
    # each question's prompt less its last token is stored once (run as one row) ...
    assert prefixes.prefix_tokens_run == sum(len(p) - 1 for p in prompts[::len(completions)])
    # ... and every row runs from there: its last prompt token and its completion, padded per chunk of 3
    suffix = [1 + len(c) for c in completions]
    assert prefixes.suffix_tokens_run == 2 * (3 * max(suffix[:3]) + 1 * suffix[3])
