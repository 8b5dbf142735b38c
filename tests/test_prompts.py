"""How questions and completions become tokens: template, joining, suffix, masks."""
from __future__ import annotations

from easyedit_split.prompts import IGNORE_INDEX, PromptFormat, collate, encode_completion


def test_chat_prompt_has_default_system_turn_and_generation_prompt(default_tokenizer):
    text = PromptFormat().prompt_text(default_tokenizer, "Hi there")
    assert text == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"
    )


def test_system_prompt_replaces_default(default_tokenizer):
    text = PromptFormat(system_prompt="Be brief.").prompt_text(default_tokenizer, "Hi")
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>\n") and "SmolLM" not in text


def test_suffix_is_the_end_of_turn(default_tokenizer):
    assert PromptFormat().completion_suffix(default_tokenizer) == "<|im_end|>\n"
    assert PromptFormat(use_chat_template=False).completion_suffix(default_tokenizer) == ""


def test_leading_space_is_dropped_after_generation_prompt(default_tokenizer):
    fmt = PromptFormat()
    with_space = encode_completion(default_tokenizer, fmt, "Q?", " Yes")
    without = encode_completion(default_tokenizer, fmt, "Q?", "Yes")
    assert with_space.input_ids == without.input_ids
    completion = default_tokenizer.decode(with_space.input_ids[with_space.prompt_length :])
    assert completion == "Yes<|im_end|>\n"


def test_prompt_ids_are_a_prefix_and_match_the_rendered_prompt(default_tokenizer):
    fmt = PromptFormat()
    encoded = encode_completion(default_tokenizer, fmt, "How are you?", "Great, thanks.")
    prompt_ids = default_tokenizer(fmt.prompt_text(default_tokenizer, "How are you?"), add_special_tokens=False)["input_ids"]
    assert encoded.input_ids[: encoded.prompt_length] == prompt_ids


def test_plain_format_joins_with_one_space(default_tokenizer):
    fmt = PromptFormat(use_chat_template=False)
    encoded = encode_completion(default_tokenizer, fmt, "The sky is", "  blue")
    assert default_tokenizer.decode(encoded.input_ids[encoded.prompt_length :]) == " blue"


def test_collate_masks_prompt_and_padding(default_tokenizer):
    fmt = PromptFormat()
    rows = [encode_completion(default_tokenizer, fmt, "A?", "Yes indeed."), encode_completion(default_tokenizer, fmt, "B?", "No.")]
    batch = collate(rows, pad_token_id=default_tokenizer.pad_token_id)
    for i, row in enumerate(rows):
        labelled = (batch.labels[i] != IGNORE_INDEX).nonzero().flatten().tolist()
        assert labelled == list(range(row.prompt_length, len(row.input_ids)))
        assert batch.attention_mask[i].sum().item() == len(row.input_ids)
