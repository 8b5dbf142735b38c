"""Steered positions pinned by hand for the default model's chat template (SmolLM2).

The default prompt of the question "Hello there" is, token by token (counted by hand):

    0-19   <|im_start|> system \\n You are a helpful AI assistant named SmolLM , trained by Hugging Face <|im_end|>
    20-23  \\n <|im_start|> user \\n                     <- the common prefix ends here: 24 tokens
    24-25  Hello  there                                 <- the first steered position is 24
    26-31  <|im_end|> \\n <|im_start|> ass istant \\n   <- prompt length 32
    then the completion "Yes" and the end-of-turn suffix <|im_end|> \\n (3 scored tokens).

Vector training and teacher-forced scoring steer "after the prefix" (positions >= 24); the
expected NLLs here come from a hand-written hook that adds `m * v` at positions >= 24, never
from `steering_prefix_length`. (Apply/generation of LoRA and local-weight updates follow the
rule of issue 14 item 3; those paths are not pinned here.)
"""
from __future__ import annotations

import pytest
import torch

from easyedit_split.data import PolarityPair
from easyedit_split.evaluation.sweep_nll import score_pairs
from easyedit_split.interventions import DynamicWeightUpdate
from easyedit_split.methods.sft import sft_loss
from easyedit_split.prompts import PromptFormat, encode_completion, encode_prompt, steering_prefix_length
from easyedit_split.prepared_pairs import prepare_pairs
from easyedit_split.training import StepPlan, step_loss
from test_training import WordTokenizer, make_hparams

PREFIX_TEXT = (
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    "<|im_start|>user\n"
)
FIRST_STEERED = 24   # counted by hand, see the module docstring
PROMPT_LENGTH = 32
LAYER = 1


def test_default_prefix_ends_the_user_header(default_tokenizer):
    fmt = PromptFormat()
    ids = encode_prompt(default_tokenizer, fmt, "Hello there")
    assert steering_prefix_length(default_tokenizer, fmt) == FIRST_STEERED
    assert default_tokenizer.decode(ids[:FIRST_STEERED]) == PREFIX_TEXT
    assert default_tokenizer.convert_ids_to_tokens(ids[FIRST_STEERED : FIRST_STEERED + 2]) == ["Hello", "Ġthere"]
    assert len(ids) == PROMPT_LENGTH


def test_prefix_with_a_system_prompt_and_without_template(default_tokenizer):
    fmt = PromptFormat(system_prompt="Be brief.")
    ids = encode_prompt(default_tokenizer, fmt, "Hello")
    n = steering_prefix_length(default_tokenizer, fmt)
    assert n == 11  # <|im_start|> system \n Be brief . <|im_end|> \n <|im_start|> user \n
    assert default_tokenizer.decode(ids[:n]) == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n"
    assert steering_prefix_length(default_tokenizer, PromptFormat(), exclude_bos=False) == 0
    # no template: SmolLM2's tokenizer adds no BOS, so nothing is left unsteered; a BOS tokenizer leaves 1
    assert steering_prefix_length(default_tokenizer, PromptFormat(use_chat_template=False)) == 0
    assert steering_prefix_length(WordTokenizer(), PromptFormat(use_chat_template=False)) == 1
    assert steering_prefix_length(WordTokenizer(), PromptFormat(use_chat_template=False), exclude_bos=False) == 0


def _hand_nll(model, ids, prompt_length, v, m, first_steered):
    """Sum of completion-token NLLs with `m * v` added to layer LAYER's output at positions >= first_steered."""
    ids_t = torch.tensor([ids])
    mask = (torch.arange(len(ids)) >= first_steered).float().view(1, -1, 1)

    def hook(module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        new = hidden + m * v * mask
        return (new,) + tuple(output[1:]) if isinstance(output, tuple) else new

    handle = model.model.layers[LAYER].register_forward_hook(hook)
    try:
        with torch.no_grad():
            logits = model(ids_t).logits[0].double()
    finally:
        handle.remove()
    logp = torch.log_softmax(logits, dim=-1)
    return -sum(logp[t - 1, ids[t]].item() for t in range(prompt_length, len(ids)))


@pytest.fixture(scope="module")
def sharp_model(default_tokenizer):
    """A tiny random Llama on the default vocabulary with large weights (initializer_range 0.3), so
    attention is peaked and steering one more or one fewer prompt position moves the NLLs visibly."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(vocab_size=len(default_tokenizer), hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0,
                         bos_token_id=1, eos_token_id=2, initializer_range=0.3)
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


@pytest.fixture(scope="module")
def vector():
    return torch.randn(32, generator=torch.Generator().manual_seed(3)) * 2.0


def test_hand_expectation_depends_on_the_first_steered_position(sharp_model, default_tokenizer, vector):
    """The anchor itself can tell position 24 from 23 and 25 (so an off-by-one fails the tests below)."""
    ids = encode_completion(default_tokenizer, PromptFormat(), "Hello there", "Yes").input_ids
    at = _hand_nll(sharp_model, ids, PROMPT_LENGTH, vector, 2.0, FIRST_STEERED)
    for other in (FIRST_STEERED - 1, FIRST_STEERED + 1):
        assert abs(_hand_nll(sharp_model, ids, PROMPT_LENGTH, vector, 2.0, other) - at) > 1e-2


@pytest.mark.parametrize("layout", ["packed", "rows"])
def test_scoring_steers_from_the_first_question_token(sharp_model, default_tokenizer, vector, layout):
    pair = PolarityPair("Hello there", "Yes", "No", concept_id=0, concept="c")
    multipliers = [0.0, 2.0, -1.5]
    scores = score_pairs(sharp_model, default_tokenizer, [pair], {LAYER: DynamicWeightUpdate.from_vector(vector)},
                         multipliers, layout=layout)
    fmt = PromptFormat()
    for completion, sums, tokens in (("Yes", scores.matching_sum, scores.matching_tokens),
                                     ("No", scores.not_matching_sum, scores.not_matching_tokens)):
        ids = encode_completion(default_tokenizer, fmt, "Hello there", completion).input_ids
        assert len(ids) == PROMPT_LENGTH + 3 and tokens[0] == 3  # answer + <|im_end|> + \n
        for k, m in enumerate(multipliers):
            expected = _hand_nll(sharp_model, ids, PROMPT_LENGTH, vector, m, FIRST_STEERED)
            assert sums[k, 0] == pytest.approx(expected, rel=1e-4, abs=1e-4), (completion, m)


@pytest.mark.parametrize("fast", [True, False])
def test_vector_training_steers_from_the_first_question_token(sharp_model, default_tokenizer, vector, fast):
    pairs = [PolarityPair("Hello there", "Yes", "No", concept_id=0, concept="c"),
             PolarityPair("Hello you", "Sure thing", "No way", concept_id=0, concept="c")]
    hp = make_hparams(use_chat_template=True, layers=[LAYER], pos_loss_weight=1.0, dropout=0.0)
    prepared = prepare_pairs(default_tokenizer, pairs, hp)
    assert prepared.prefix_length == FIRST_STEERED
    if fast:
        prepared.capture(sharp_model, LAYER)
    update = DynamicWeightUpdate.from_vector(vector)
    # rows: 0 "Hello there"+Yes, 1 +No, 2 "Hello you"+"Sure thing", 3 +"No way"; orig_add at 1.5, orig_sub at -1.5
    plan = StepPlan(torch.tensor([0, 1, 2, 3]), torch.tensor([1, 0, 3, 2]), torch.tensor([1.5, -1.5, 1.5, -1.5]),
                    torch.zeros(4, dtype=torch.bool), chunk_size=4)
    got = step_loss(sharp_model, prepared, LAYER, update, plan, sft_loss, hp, fast=fast)
    fmt = PromptFormat()
    sums, counts = 0.0, 0
    for question, completion, m in (("Hello there", "Yes", 1.5), ("Hello there", "No", -1.5),
                                    ("Hello you", "Sure thing", 1.5), ("Hello you", "No way", -1.5)):
        ids = encode_completion(default_tokenizer, fmt, question, completion).input_ids
        sums += _hand_nll(sharp_model, ids, PROMPT_LENGTH, vector, m, FIRST_STEERED)
        counts += len(ids) - PROMPT_LENGTH
    assert counts == 3 + 3 + 4 + 4  # "Sure thing" and "No way" are two tokens each, plus the 2-token suffix
    assert got.item() == pytest.approx(sums / counts, rel=1e-4)
