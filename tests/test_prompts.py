"""prompts.py: how questions and completions become tokens (template, joining, suffix, masks), rule by
rule, on a word tokenizer whose every id can be counted by hand.

`StubTokenizer` gives one id per whitespace-separated word and renders a chat as
`<role> content <end>` turns (an assistant turn ends with `<eot>`) (`<assistant>` as the generation
prompt). So the prompt of question "q" is `<user> q <end> <assistant>` (4 ids), the common prefix of
two prompts is `<user>` (1 id), and the suffix that ends an assistant turn is `<eot>`. Expected
values are counted from those strings, never taken from the functions under test.
"""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from easyedit_split.errors import DatasetError
from easyedit_split.prompts import (
    EASYEDIT_CONVENTIONS, EncodedCompletion, IGNORE_INDEX, JOIN_RULE, PACKAGE_CONVENTIONS, PromptFormat,
    TokenBatch, _common_prefix_length, check_completion_length, check_prompt_length, collate, context_length,
    conventions_for, encode_batch, encode_completion, encode_prompt, first_steered_position, pad_token_id_of,
    steered_prompt_positions, steering_prefix_length,
)


BOS = 1


class StubTokenizer:
    """One id per word (ids from 10 up, in order of first sight); BOS = 1 added on request."""

    def __init__(self, chat_template="stub", bos_token_id=BOS, pad_token_id=None, eos_token_id=2,
                 model_max_length=1_000_000_000_000):
        self.chat_template = chat_template
        self.bos_token_id, self.pad_token_id, self.eos_token_id = bos_token_id, pad_token_id, eos_token_id
        self.model_max_length = model_max_length
        self.vocab: dict[str, int] = {}
        self.special_tokens_requested: list[bool] = []

    def __call__(self, text, add_special_tokens=True):
        self.special_tokens_requested.append(add_special_tokens)
        ids = [self.vocab.setdefault(word, 10 + len(self.vocab)) for word in text.split()]
        bos = [self.bos_token_id] if add_special_tokens and self.bos_token_id is not None else []
        return {"input_ids": bos + ids}

    def apply_chat_template(self, messages, tokenize=True, add_generation_prompt=False):
        assert tokenize is False
        if any(m["role"] not in ("system", "user", "assistant") for m in messages):
            raise ValueError("roles must be system, user or assistant")  # as strict templates do
        # an assistant turn ends with <eot>, the others with <end> (Llama-2-style templates differ like this)
        text = "".join(f"<{m['role']}> {m['content']} {'<eot>' if m['role'] == 'assistant' else '<end>'} " for m in messages)
        return text + ("<assistant> " if add_generation_prompt else "")

    def words(self, ids):
        names = {v: k for k, v in self.vocab.items()}
        return [names.get(i, i) for i in ids]


# ----------------------------------------------------------------------------- the format's rules


def test_defaults_are_the_package_rules():
    fmt = PromptFormat()
    assert (fmt.use_chat_template, fmt.system_prompt, fmt.include_suffix) == (True, "", True)
    assert fmt.conventions() == {"completion_join": "strip_leading_space", "steer_positions": "after_prefix"}
    assert PACKAGE_CONVENTIONS == {"steer_positions": "after_prefix", "completion_join": "strip_leading_space"}
    assert EASYEDIT_CONVENTIONS == {"steer_positions": "easyedit", "completion_join": "as_stored"}


def test_bad_rules_name_the_key_the_value_and_the_choices():
    with pytest.raises(ValueError) as error:
        PromptFormat(completion_join="glue")
    assert str(error.value) == "completion_join: 'glue' is not one of as_stored, strip_leading_space (see docs/conventions.md)"
    with pytest.raises(ValueError) as error:
        PromptFormat(steer_positions="middle")
    assert str(error.value) == "steer_positions: 'middle' is not one of easyedit, after_prefix, all (see docs/conventions.md)"


def test_from_hparams_without_the_keys_is_easyedit():
    fmt = PromptFormat.from_hparams(SimpleNamespace())
    assert fmt.use_chat_template is True and fmt.system_prompt == "" and fmt.include_suffix is True
    assert fmt.conventions() == {"completion_join": "as_stored", "steer_positions": "easyedit"}
    nones = PromptFormat.from_hparams(SimpleNamespace(system_prompt=None, completion_join=None, steer_positions=None))
    assert nones.system_prompt == "" and nones.conventions() == EASYEDIT_CONVENTIONS
    given = PromptFormat.from_hparams(SimpleNamespace(
        use_chat_template=0, system_prompt="Be brief.", completion_join="strip_leading_space", steer_positions="all"))
    assert given.use_chat_template is False and given.system_prompt == "Be brief."
    assert given.conventions() == {"completion_join": "strip_leading_space", "steer_positions": "all"}


def test_join_rule_texts():
    assert PromptFormat().join_rule == (
        "strip_leading_space: chat template: templated prompt + completion.lstrip() + end-of-turn suffix; "
        "plain: prompt + ' ' + completion.lstrip()")
    assert PromptFormat(completion_join="as_stored").join_rule == (
        "as_stored: chat template: templated prompt + completion as stored (leading space kept) + end-of-turn "
        "suffix; plain: prompt + completion as stored")
    assert JOIN_RULE == PromptFormat().join_rule.split(": ", 1)[1]


def test_uses_template_needs_both_the_flag_and_a_template():
    assert PromptFormat().uses_template(StubTokenizer())
    assert not PromptFormat(use_chat_template=False).uses_template(StubTokenizer())
    assert not PromptFormat().uses_template(StubTokenizer(chat_template=None))
    assert not PromptFormat().uses_template(object())  # no chat_template attribute at all


def test_prompt_text_with_and_without_template_and_system_prompt():
    tok = StubTokenizer()
    assert PromptFormat().prompt_text(tok, "Why?") == "<user> Why? <end> <assistant> "
    assert PromptFormat(system_prompt="Be brief.").prompt_text(tok, "Why?") == (
        "<system> Be brief. <end> <user> Why? <end> <assistant> ")
    assert PromptFormat(use_chat_template=False).prompt_text(tok, "Why?") == "Why?"
    assert PromptFormat().prompt_text(StubTokenizer(chat_template=None), "Why?") == "Why?"


def test_completion_suffix_is_what_follows_the_assistant_message():
    tok = StubTokenizer()
    assert PromptFormat().completion_suffix(tok) == " <eot> "
    assert PromptFormat(include_suffix=False).completion_suffix(tok) == ""
    assert PromptFormat(use_chat_template=False).completion_suffix(tok) == ""

    class Echo(StubTokenizer):  # the assistant content appears twice: the suffix is all after the first
        def apply_chat_template(self, messages, tokenize=True, add_generation_prompt=False):
            last = messages[-1]["content"]
            return f"<user> q <end> <assistant> {last} <end> <echo> {last} <stop>"

    assert PromptFormat().completion_suffix(Echo()).endswith(" <end> <echo> \u2063PROBE\u2063 <stop>")

    class Dropper(StubTokenizer):  # a template that drops the assistant content: no suffix known
        def apply_chat_template(self, messages, tokenize=True, add_generation_prompt=False):
            return "<user> q <end>"

    assert PromptFormat().completion_suffix(Dropper()) == ""


def test_join_strips_or_keeps_the_leading_space():
    tok, plain = StubTokenizer(), StubTokenizer(chat_template=None)
    assert PromptFormat().join(tok, "  Yes ") == "Yes "
    assert PromptFormat().join(plain, "  Yes ") == " Yes "
    assert PromptFormat(completion_join="as_stored").join(tok, "  Yes ") == "  Yes "
    assert PromptFormat(completion_join="as_stored").join(plain, "  Yes ") == "  Yes "


def test_conventions_for_explicit_then_hparams_then_dataset():
    assert conventions_for() == EASYEDIT_CONVENTIONS
    assert conventions_for("sentiment") == PACKAGE_CONVENTIONS
    assert conventions_for("my_data.json") == EASYEDIT_CONVENTIONS
    assert conventions_for(["sentiment"]) == EASYEDIT_CONVENTIONS  # only a shipped dataset's name counts
    assert conventions_for("sentiment", hparams=SimpleNamespace()) == EASYEDIT_CONVENTIONS
    assert conventions_for(hparams=SimpleNamespace(steer_positions="all")) == {
        "completion_join": "as_stored", "steer_positions": "all"}
    assert conventions_for("sentiment", steer_positions="easyedit") == {
        "steer_positions": "easyedit", "completion_join": "strip_leading_space"}
    assert conventions_for("x", completion_join="strip_leading_space") == {
        "steer_positions": "easyedit", "completion_join": "strip_leading_space"}
    # the module's constants are never modified by an override
    assert PACKAGE_CONVENTIONS == {"steer_positions": "after_prefix", "completion_join": "strip_leading_space"}
    assert EASYEDIT_CONVENTIONS == {"steer_positions": "easyedit", "completion_join": "as_stored"}


# ----------------------------------------------------------------------------- positions


def test_common_prefix_length_by_hand():
    assert _common_prefix_length([1, 2, 3, 4], [1, 2, 9, 4]) == 2  # stops at the first difference
    assert _common_prefix_length([1, 2], [1, 2, 3]) == 2
    assert _common_prefix_length([5], [6]) == 0
    assert _common_prefix_length([], [1]) == 0


def test_steering_prefix_length_by_hand():
    tok = StubTokenizer()
    assert steering_prefix_length(tok, PromptFormat()) == 1  # "<user>"
    assert steering_prefix_length(tok, PromptFormat(system_prompt="Be very brief.")) == 6  # <system> Be very brief. <end> <user>
    assert steering_prefix_length(tok, PromptFormat(), exclude_bos=False) == 0
    assert steering_prefix_length(tok, PromptFormat(use_chat_template=False)) == 1  # the BOS
    assert steering_prefix_length(tok, PromptFormat(use_chat_template=False), exclude_bos=False) == 0
    assert steering_prefix_length(StubTokenizer(bos_token_id=None), PromptFormat(use_chat_template=False)) == 0

    class OtherFirst(StubTokenizer):  # a BOS id that the tokenizer does not put first
        def __call__(self, text, add_special_tokens=True):
            return {"input_ids": [7] + super().__call__(text, False)["input_ids"]}

    assert steering_prefix_length(OtherFirst(), PromptFormat(use_chat_template=False)) == 0

    class Empty(StubTokenizer):
        def __call__(self, text, add_special_tokens=True):
            return {"input_ids": []}

    assert steering_prefix_length(Empty(), PromptFormat(use_chat_template=False)) == 0


@pytest.mark.parametrize("rule, method, path, expected", [
    ("all", "vector", "training", 0), ("all", "vector", "scoring", 0), ("all", "lora", "generation", 0),
    ("after_prefix", "vector", "training", 1), ("after_prefix", "lora", "scoring", 1),
    ("after_prefix", "local_weight", "generation", 1),
    ("easyedit", "vector", "training", 1), ("easyedit", "vector", "scoring", 1), ("easyedit", "vector", "generation", 0),
    ("easyedit", "lora", "training", 0), ("easyedit", "local_weight", "scoring", 0), ("easyedit", "lora", "generation", 0),
])
def test_first_steered_position_table(rule, method, path, expected):
    """The table of docs/conventions.md with the stub's 1-token prefix ("<user>")."""
    assert first_steered_position(StubTokenizer(), PromptFormat(steer_positions=rule), method, path) == expected


def test_first_steered_position_passes_exclude_bos_and_checks_its_arguments():
    tok = StubTokenizer()
    assert first_steered_position(tok, PromptFormat(), "vector", "training", exclude_bos=False) == 0
    with pytest.raises(ValueError) as error:
        first_steered_position(tok, PromptFormat(), "vector", "decoding")
    assert str(error.value) == "path: 'decoding' is not one of training, scoring, generation (see docs/conventions.md)"
    duck = SimpleNamespace(steer_positions="middle")  # a format that skipped PromptFormat's own check
    with pytest.raises(ValueError, match="^steer_positions: 'middle' is not one of"):
        first_steered_position(tok, duck, "vector", "training")


def test_steered_prompt_positions_of_a_left_padded_batch():
    """Row 0 has 2 pad positions, row 1 none; the prefix is 1 token after the padding."""
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    got = steered_prompt_positions(StubTokenizer(), PromptFormat(), mask)
    assert got.tolist() == [[False, False, False, True, True], [False, True, True, True, True]]
    everywhere = steered_prompt_positions(StubTokenizer(), PromptFormat(steer_positions="easyedit"), mask)
    assert everywhere.tolist() == [[False, False, True, True, True], [True] * 5]  # EasyEdit: generation steers all


# ----------------------------------------------------------------------------- encoding


def test_encode_prompt_adds_special_tokens_only_without_template():
    tok = StubTokenizer()
    ids = encode_prompt(tok, PromptFormat(), "Why?")
    assert tok.words(ids) == ["<user>", "Why?", "<end>", "<assistant>"] and tok.special_tokens_requested == [False]
    plain = encode_prompt(tok, PromptFormat(use_chat_template=False), "Why?")
    assert plain[0] == BOS and tok.words(plain[1:]) == ["Why?"] and tok.special_tokens_requested[-1] is True


def test_encode_completion_counts_and_suffix():
    tok = StubTokenizer()
    encoded = encode_completion(tok, PromptFormat(), "Why?", " Because it is.")
    assert encoded.prompt_length == 4 and encoded.completion_length == 4  # Because it is. <eot>
    assert tok.words(encoded.input_ids) == ["<user>", "Why?", "<end>", "<assistant>", "Because", "it", "is.", "<eot>"]
    assert tok.special_tokens_requested == [False, False]  # answers never get a BOS
    assert EncodedCompletion([1, 2, 3], 1).completion_length == 2


def test_empty_completion_is_an_error_naming_it():
    plain = StubTokenizer(chat_template=None)
    with pytest.raises(ValueError) as error:
        encode_completion(plain, PromptFormat(use_chat_template=False, completion_join="as_stored"), "Why?", "  ")
    assert str(error.value) == "completion '  ' tokenizes to nothing"


def test_context_length_takes_the_smaller_known_limit():
    model = SimpleNamespace(config=SimpleNamespace(max_position_embeddings=64))
    assert context_length(StubTokenizer(model_max_length=100), model) == 64
    assert context_length(StubTokenizer(model_max_length=50), model) == 50
    assert context_length(StubTokenizer(model_max_length=50)) == 50
    assert context_length(StubTokenizer(model_max_length=50.0)) == 50 and isinstance(context_length(StubTokenizer(model_max_length=50.0)), int)
    assert context_length(StubTokenizer(model_max_length=1)) == 1
    assert context_length(StubTokenizer(model_max_length=999_999)) == 999_999
    assert context_length(StubTokenizer(model_max_length=1_000_000)) is None  # the "no limit" sentinel range
    assert context_length(StubTokenizer(model_max_length=0)) is None
    assert context_length(StubTokenizer(model_max_length="64")) is None
    assert context_length(StubTokenizer(model_max_length=None), SimpleNamespace(config=None)) is None
    assert context_length(StubTokenizer(model_max_length=int(1e30)), model) == 64


def test_length_errors_name_the_row_the_count_and_the_limit():
    fmt = PromptFormat(use_chat_template=False)
    question = "one two three four five six seven eight nine ten"  # 49 characters, 10 words
    tok = StubTokenizer(chat_template=None, model_max_length=11)
    assert check_prompt_length(tok, fmt, question) == 11  # BOS + 10 words: exactly at the limit
    with pytest.raises(DatasetError) as error:
        check_prompt_length(tok, fmt, question, extra_tokens=3)
    assert str(error.value) == (
        "prompt 'one two three four five six seven eight ...': 11 tokens + 3 new tokens exceed the model's "
        "context of 11 tokens; shorten it or ask for fewer new tokens")
    with pytest.raises(DatasetError) as error:
        check_prompt_length(tok, fmt, question, model=SimpleNamespace(config=SimpleNamespace(max_position_embeddings=10)))
    assert str(error.value) == (
        "prompt 'one two three four five six seven eight ...': 11 tokens exceed the model's context of 10 tokens; shorten it")
    exactly_40 = "a b c d e f g h i j k l m n o p q r s tt"  # 40 characters: no ellipsis
    assert len(exactly_40) == 40
    with pytest.raises(DatasetError) as error:
        check_prompt_length(StubTokenizer(chat_template=None, model_max_length=5), fmt, exactly_40)
    assert str(error.value).startswith(f"prompt {exactly_40!r}: 21 tokens exceed")


def test_completion_length_counts_prompt_completion_and_suffix():
    tok = StubTokenizer(model_max_length=8)
    assert check_completion_length(tok, PromptFormat(), "Why?", "Because it is.") == 8  # 4 + 3 + <eot>
    with pytest.raises(DatasetError) as error:
        check_completion_length(tok, PromptFormat(), "Why?", "Because it is so.")
    assert str(error.value) == "prompt + completion 'Why?': 9 tokens exceed the model's context of 8 tokens; shorten it"
    model = SimpleNamespace(config=SimpleNamespace(max_position_embeddings=7))
    with pytest.raises(DatasetError) as error:  # the model's limit is checked too, with the same wording
        check_completion_length(StubTokenizer(), PromptFormat(), "Why?", "Because it is.", model=model)
    assert str(error.value) == "prompt + completion 'Why?': 8 tokens exceed the model's context of 7 tokens; shorten it"


# ----------------------------------------------------------------------------- batches


def test_pad_token_id_falls_back_to_eos_then_zero():
    assert pad_token_id_of(SimpleNamespace(pad_token_id=5, eos_token_id=2)) == 5
    assert pad_token_id_of(SimpleNamespace(pad_token_id=None, eos_token_id=2)) == 2
    assert pad_token_id_of(SimpleNamespace(pad_token_id=None, eos_token_id=[7, 8])) == 7
    assert pad_token_id_of(SimpleNamespace(pad_token_id=[], eos_token_id=(9,))) == 9
    assert pad_token_id_of(SimpleNamespace(pad_token_id=0, eos_token_id=2)) == 0  # 0 is a valid pad id
    assert pad_token_id_of(SimpleNamespace()) == 0
    assert isinstance(pad_token_id_of(SimpleNamespace(pad_token_id=torch.tensor(3))), int)


def test_collate_pads_right_masks_and_truncates():
    rows = [EncodedCompletion([11, 12, 13, 14, 15], 2), EncodedCompletion([21, 22, 23], 1)]
    batch = collate(rows, pad_token_id=9)
    assert batch.input_ids.tolist() == [[11, 12, 13, 14, 15], [21, 22, 23, 9, 9]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    assert batch.labels.tolist() == [[-100, -100, 13, 14, 15], [-100, 22, 23, -100, -100]]
    assert batch.input_ids.dtype == batch.attention_mask.dtype == batch.labels.dtype == torch.long
    assert len(batch) == 2
    short = collate(rows, pad_token_id=None, max_length=4)
    assert short.input_ids.tolist() == [[11, 12, 13, 14], [21, 22, 23, 0]]
    assert short.labels.tolist() == [[-100, -100, 13, 14], [-100, 22, 23, -100]]
    assert short.attention_mask.tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    assert IGNORE_INDEX == -100


def test_token_batch_moves_every_tensor():
    batch = collate([EncodedCompletion([11, 12], 1)], pad_token_id=0).to("meta")
    assert {t.device.type for t in (batch.input_ids, batch.attention_mask, batch.labels)} == {"meta"}
    assert isinstance(batch, TokenBatch) and batch.input_ids.shape == batch.labels.shape == (1, 2)


def test_encode_batch_end_to_end_by_hand():
    tok = StubTokenizer(pad_token_id=None, eos_token_id=2)
    batch = encode_batch(tok, PromptFormat(), ["Why?", "How so?"], ["Because.", "Like this, see."])
    # row 0: <user> Why? <end> <assistant> Because. <eot>           (6, prompt 4)
    # row 1: <user> How so? <end> <assistant> Like this, see. <eot>  (9, prompt 5)
    assert batch.attention_mask.sum(dim=1).tolist() == [6, 9]
    assert batch.input_ids[0, 6:].tolist() == [2, 2, 2]  # padded with EOS (no pad token)
    assert (batch.labels[0] != IGNORE_INDEX).nonzero().flatten().tolist() == [4, 5]
    assert (batch.labels[1] != IGNORE_INDEX).nonzero().flatten().tolist() == [5, 6, 7, 8]
    assert tok.words(batch.labels[1, 5:].tolist()) == ["Like", "this,", "see.", "<eot>"]
    trimmed = encode_batch(tok, PromptFormat(), ["Why?", "How so?"], ["Because.", "Like this, see."], max_length=5)
    assert trimmed.input_ids.shape == (2, 5) and trimmed.attention_mask.sum(dim=1).tolist() == [5, 5]


def test_encode_completion_checks_the_tokenizer_limit_itself():
    """Training encodes rows without `check_completion_length`: the encoder refuses an over-long row on its own."""
    tok = StubTokenizer(model_max_length=7)
    with pytest.raises(DatasetError) as error:
        encode_completion(tok, PromptFormat(), "Why?", "Because it is.")
    assert str(error.value) == "prompt + completion 'Why?': 8 tokens exceed the model's context of 7 tokens; shorten it"
    assert len(encode_completion(StubTokenizer(model_max_length=8), PromptFormat(), "Why?", "Because it is.").input_ids) == 8


def test_a_41_character_question_is_shortened_with_an_ellipsis():
    question = "a b c d e f g h i j k l m n o p q r s ttt"
    assert len(question) == 41
    with pytest.raises(DatasetError) as error:
        check_prompt_length(StubTokenizer(chat_template=None, model_max_length=5), PromptFormat(use_chat_template=False), question)
    assert str(error.value).startswith(f"prompt {question[:40] + '...'!r}: 21 tokens exceed")


def test_steered_prompt_positions_stay_on_the_mask_device():
    mask = torch.tensor([[0, 1, 1], [1, 1, 1]], device="meta")
    assert steered_prompt_positions(StubTokenizer(), PromptFormat(), mask).device.type == "meta"


def test_tokenizers_without_bos_or_length_attributes():
    """A bare tokenizer object (no `bos_token_id`, no `model_max_length`) is legal: no BOS, no limit of its own."""

    class Bare:
        def __call__(self, text, add_special_tokens=True):
            return {"input_ids": [10 + i for i, _ in enumerate(text.split())]}

    plain = PromptFormat(use_chat_template=False)
    assert steering_prefix_length(Bare(), plain) == 0
    assert context_length(Bare()) is None
    assert context_length(Bare(), SimpleNamespace(config=SimpleNamespace(max_position_embeddings=12))) == 12


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
