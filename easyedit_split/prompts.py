"""How a question and a completion become token ids: chat template, joining, prompt masking.

Decisions (DESIGN 3, 7):
- With a chat template the prompt is the templated user turn plus the generation prompt (the
  `system_prompt` as a system turn when non-empty, else the template's default), and the
  completion is followed by the template's end-of-turn suffix (`<|im_end|>\\n` for SmolLM2), as
  EasyEdit builds its training sequences.
- Completions are joined without their leading whitespace after a generation prompt: the
  assistant turn starts on a new line, and a leading-space token there is off-distribution
  (" Yes" costs SmolLM2 ~12 nats more than "Yes"). Without a chat template a single space joins
  prompt and completion. `JOIN_RULE` records this so reports can say what was scored.
- Prompt and completion are tokenized separately and concatenated, so the boundary between
  them is exact and the loss covers completion (+ suffix) tokens only.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch

IGNORE_INDEX = -100
JOIN_RULE = (
    "chat template: templated prompt + completion.lstrip() + end-of-turn suffix; "
    "plain: prompt + ' ' + completion.lstrip()"
)
_PROBE = "\u2063PROBE\u2063"


@dataclass(frozen=True)
class PromptFormat:
    """How prompts are rendered: EasyEdit's `use_chat_template` and `system_prompt` semantics."""

    use_chat_template: bool = True
    system_prompt: str = ""
    include_suffix: bool = True

    @classmethod
    def from_hparams(cls, hparams: Any) -> "PromptFormat":
        return cls(
            use_chat_template=bool(getattr(hparams, "use_chat_template", True)),
            system_prompt=getattr(hparams, "system_prompt", "") or "",
        )

    def uses_template(self, tokenizer: Any) -> bool:
        return self.use_chat_template and getattr(tokenizer, "chat_template", None) is not None

    def _messages(self, question: str) -> list[dict[str, str]]:
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return messages + [{"role": "user", "content": question}]

    def prompt_text(self, tokenizer: Any, question: str) -> str:
        """The text the model sees before its answer."""
        if not self.uses_template(tokenizer):
            return question
        return tokenizer.apply_chat_template(self._messages(question), tokenize=False, add_generation_prompt=True)

    def completion_suffix(self, tokenizer: Any) -> str:
        """The template's end-of-turn text after an assistant message ('' without a template)."""
        if not (self.include_suffix and self.uses_template(tokenizer)):
            return ""
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": "q"}, {"role": "assistant", "content": _PROBE}], tokenize=False
        )
        return rendered.split(_PROBE, 1)[1] if _PROBE in rendered else ""

    def join(self, tokenizer: Any, completion: str) -> str:
        """Completion text as placed after the prompt (see JOIN_RULE)."""
        text = completion.lstrip()
        return text if self.uses_template(tokenizer) else " " + text


def _common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    length = 0
    for x, y in zip(a, b):
        if x != y:
            break
        length += 1
    return length


def steering_prefix_length(tokenizer: Any, fmt: PromptFormat, exclude_bos: bool = True) -> int:
    """Leading positions EasyEdit leaves unsteered: the chat template's common prefix
    (system turn and user header), or the BOS token without a template; 0 with `exclude_bos: false`."""
    if not exclude_bos:
        return 0
    if fmt.uses_template(tokenizer):
        return _common_prefix_length(encode_prompt(tokenizer, fmt, "1"), encode_prompt(tokenizer, fmt, "2"))
    bos = getattr(tokenizer, "bos_token_id", None)
    ids = encode_prompt(tokenizer, fmt, "1")
    return 1 if bos is not None and ids and ids[0] == bos else 0


def steered_prompt_positions(tokenizer: Any, fmt: PromptFormat, attention_mask: torch.Tensor) -> torch.Tensor:
    """[batch, seq] mask of the positions to steer in a LEFT-padded prompt batch (generation):
    everything after the chat template's common prefix, as in training and evaluation. Used as
    `InterventionHandle.positions`; the tokens generated afterwards are always steered."""
    prefix = steering_prefix_length(tokenizer, fmt)
    first_real = attention_mask.shape[1] - attention_mask.sum(dim=1, keepdim=True)
    position = torch.arange(attention_mask.shape[1], device=attention_mask.device).unsqueeze(0)
    return position >= first_real + prefix


@dataclass
class EncodedCompletion:
    """Token ids of one prompt + completion, and how many of them are prompt."""

    input_ids: list[int]
    prompt_length: int

    @property
    def completion_length(self) -> int:
        return len(self.input_ids) - self.prompt_length


def encode_prompt(tokenizer: Any, fmt: PromptFormat, question: str) -> list[int]:
    text = fmt.prompt_text(tokenizer, question)
    # A rendered chat template already carries its special tokens (BOS where the model uses one).
    return tokenizer(text, add_special_tokens=not fmt.uses_template(tokenizer))["input_ids"]


def encode_completion(tokenizer: Any, fmt: PromptFormat, question: str, completion: str) -> EncodedCompletion:
    """Prompt ids + completion ids (+ suffix ids), tokenized separately so the boundary is exact."""
    prompt_ids = encode_prompt(tokenizer, fmt, question)
    answer = fmt.join(tokenizer, completion) + fmt.completion_suffix(tokenizer)
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    if not answer_ids:
        raise ValueError(f"completion {completion!r} tokenizes to nothing")
    _check_length(len(prompt_ids) + len(answer_ids), context_length(tokenizer), question, "prompt + completion")
    return EncodedCompletion(list(prompt_ids) + list(answer_ids), len(prompt_ids))


_NO_LIMIT = 1_000_000  # tokenizers without a known limit report a huge model_max_length


def context_length(tokenizer: Any, model: Any = None) -> Optional[int]:
    """The longest sequence the model takes: its `max_position_embeddings`, else the tokenizer's limit."""
    limits = [getattr(getattr(model, "config", None), "max_position_embeddings", None),
              getattr(tokenizer, "model_max_length", None)]
    known = [int(limit) for limit in limits if isinstance(limit, (int, float)) and 0 < limit < _NO_LIMIT]
    return min(known) if known else None


def _check_length(length: int, limit: Optional[int], question: str, what: str, extra_tokens: int = 0) -> None:
    if limit is not None and length + extra_tokens > limit:
        from .errors import DatasetError  # here: errors is tiny, but keep this module's imports minimal

        start = question[:40] + ("..." if len(question) > 40 else "")
        plus = f" + {extra_tokens} new tokens" if extra_tokens else ""
        raise DatasetError(f"{what} {start!r}: {length} tokens{plus} exceed the model's context of {limit} tokens; "
                           "shorten it" + (" or ask for fewer new tokens" if extra_tokens else ""))


def check_completion_length(tokenizer: Any, fmt: PromptFormat, question: str, completion: str, model: Any = None) -> int:
    """The scored row's token count (prompt + completion + suffix), or a clear error when it exceeds the context."""
    encoded = encode_completion(tokenizer, fmt, question, completion)
    _check_length(len(encoded.input_ids), context_length(tokenizer, model), question, "prompt + completion")
    return len(encoded.input_ids)


def check_prompt_length(tokenizer: Any, fmt: PromptFormat, question: str, model: Any = None, extra_tokens: int = 0) -> int:
    """The prompt's token count, or a clear error when it (plus `extra_tokens` to generate) exceeds the context."""
    length = len(encode_prompt(tokenizer, fmt, question))
    _check_length(length, context_length(tokenizer, model), question, "prompt", extra_tokens)
    return length


@dataclass
class TokenBatch:
    """A right-padded batch with labels that are IGNORE_INDEX on prompt and padding positions."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor

    def to(self, device: Any) -> "TokenBatch":
        return TokenBatch(self.input_ids.to(device), self.attention_mask.to(device), self.labels.to(device))

    def __len__(self) -> int:
        return self.input_ids.shape[0]


def collate(encoded: Sequence[EncodedCompletion], pad_token_id: int, max_length: Optional[int] = None) -> TokenBatch:
    """Right-pad encoded completions into one batch (right padding keeps positions unchanged)."""
    rows = [e.input_ids[:max_length] if max_length else e.input_ids for e in encoded]
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    for i, (row, enc) in enumerate(zip(rows, encoded)):
        input_ids[i, : len(row)] = torch.tensor(row)
        attention_mask[i, : len(row)] = 1
        labels[i, enc.prompt_length : len(row)] = torch.tensor(row[enc.prompt_length :], dtype=torch.long)
    return TokenBatch(input_ids, attention_mask, labels)


def encode_batch(
    tokenizer: Any, fmt: PromptFormat, questions: Sequence[str], completions: Sequence[str],
    max_length: Optional[int] = None,
) -> TokenBatch:
    """Tokenize (question, completion) rows into a padded, prompt-masked batch."""
    encoded = [encode_completion(tokenizer, fmt, q, c) for q, c in zip(questions, completions)]
    return collate(encoded, tokenizer.pad_token_id, max_length)
