"""Text metrics of generated text: distinct-n (lexical diversity), and perplexity under the unsteered model.

distinct-n = (number of distinct n-grams) / (number of n-grams) over whitespace tokens, pooled over
the texts given (Li et al., 2016). EasyEdit divides by the number of words instead; pass
``normalize_by="words"`` for its numbers. Text too short to hold an n-gram has no distinct-n (None).

Perplexity of a completion = exp(mean NLL of the completion tokens given the prompt and the earlier
completion tokens), under the model passed in (call it with the steering removed). Prompt tokens are
context only. Log-probabilities are taken in float32 whatever the model's dtype.
"""
from __future__ import annotations

import math
from typing import Any, Literal, Optional, Sequence, Union

import torch

from ..fastpath.token_nll import token_nll
from ..judging.prefix_reuse import PrefixKV
from ..models import head_logits


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(texts: Union[str, Sequence[str]], n: int,
               normalize_by: Literal["ngrams", "words"] = "ngrams") -> Optional[float]:
    """Distinct n-grams over all n-grams (or over all words) of `texts`; None when there are none."""
    if n < 1:
        raise ValueError(f"distinct-n needs n >= 1, got {n}")
    if normalize_by not in ("ngrams", "words"):
        raise ValueError(f"normalize_by must be 'ngrams' or 'words', got {normalize_by!r}")
    if isinstance(texts, str):
        texts = [texts]
    distinct: set[tuple[str, ...]] = set()
    total_ngrams = total_words = 0
    for text in texts:
        tokens = text.split()
        grams = ngrams(tokens, n)
        distinct.update(grams)
        total_ngrams += len(grams)
        total_words += len(tokens)
    denominator = total_ngrams if normalize_by == "ngrams" else total_words
    return len(distinct) / denominator if denominator and total_ngrams else None


def distinct_1_2_3(texts: Union[str, Sequence[str]]) -> dict[str, Optional[float]]:
    """``{"distinct_1": ..., "distinct_2": ..., "distinct_3": ...}`` for one text or a pool of texts."""
    return {f"distinct_{n}": distinct_n(texts, n) for n in (1, 2, 3)}


@torch.no_grad()
def completion_nlls(
    model: Any,
    prompt_ids: Sequence[Sequence[int]],
    completion_ids: Sequence[Sequence[int]],
    pad_token_id: int = 0,
    batch_size: int = 8,
    reuse_prefix: bool = True,
) -> list[tuple[float, int]]:
    """Per row: (sum of completion-token NLLs in nats, number of completion tokens).

    Position i's logits predict token i+1, so completion token j (at position len(prompt)+j) is
    scored from the hidden state at position len(prompt)+j-1; the LM head runs at those positions
    only. With `reuse_prefix`, the prompt tokens rows share (the chat header, the same question
    for every multiplier and method) run once and each row runs from there on their keys and values
    (`judging.prefix_reuse`: exact to float rounding; planned on the prompts, so every scored
    position is run); other rows, and models it does not apply to, run whole, right-padded in
    batches of `batch_size`.
    """
    if len(prompt_ids) != len(completion_ids):
        raise ValueError(f"{len(prompt_ids)} prompts but {len(completion_ids)} completions")
    for prompt in prompt_ids:
        if not prompt:
            raise ValueError("perplexity needs at least one prompt token (e.g. BOS) before the completion")
    device = next(model.parameters()).device
    contexts = [list(p) + list(c) for p, c in zip(prompt_ids, completion_ids)]
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    body = model.get_decoder() if hasattr(model, "get_decoder") else None
    separable = head is not None and body is not None and body is not model  # else: the whole model's logits
    groups, plain = [], list(range(len(contexts)))
    prefixes = PrefixKV()
    argument = prefixes.usable(model, body, contexts) if reuse_prefix and separable else None
    if argument is not None:
        groups, plain = prefixes.plan(body, argument, [list(p) for p in prompt_ids], device)
    results: list[Optional[tuple[float, int]]] = [None] * len(contexts)
    step = max(1, int(batch_size))
    for group in groups:
        for start in range(0, len(group.rows), step):
            chunk = group.rows[start:start + step]
            hidden = prefixes.suffix_hidden(body, argument, group, [contexts[i] for i in chunk], pad_token_id, device)
            _score(model, head, hidden, [len(prompt_ids[i]) - group.length for i in chunk],
                   [completion_ids[i] for i in chunk], chunk, results)
    for start in range(0, len(plain), step):
        chunk = plain[start:start + step]
        width = max(len(contexts[i]) for i in chunk)
        input_ids = torch.full((len(chunk), width), pad_token_id, dtype=torch.long)
        attention = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, index in enumerate(chunk):
            input_ids[row, :len(contexts[index])] = torch.tensor(contexts[index], dtype=torch.long)
            attention[row, :len(contexts[index])] = 1
        input_ids, attention = input_ids.to(device), attention.to(device)
        if not separable:
            _score(model, None, model(input_ids=input_ids, attention_mask=attention).logits,
                   [len(prompt_ids[i]) for i in chunk], [completion_ids[i] for i in chunk], chunk, results)
        else:
            hidden = body(input_ids=input_ids, attention_mask=attention, use_cache=False).last_hidden_state
            _score(model, head, hidden, [len(prompt_ids[i]) for i in chunk], [completion_ids[i] for i in chunk],
                   chunk, results)
    missing = [index for index, result in enumerate(results) if result is None]
    if missing:
        raise RuntimeError(f"completion_nlls: rows {missing} were not scored (a planning error)")
    return results  # type: ignore[return-value]


def _score(model: Any, head: Any, states: torch.Tensor, prompt_ends: Sequence[int],
           completions: Sequence[Sequence[int]], indices: Sequence[int], results: list) -> None:
    """Completion NLL sums of a batch into `results[indices]`: `states` ``[rows, width, ...]`` are
    hidden states (LM head `head` applied at the scored positions only) or, without `head`, logits;
    row r's completion token j is predicted at `prompt_ends[r] - 1 + j`."""
    row_index = torch.tensor([row for row, c in enumerate(completions) for _ in c], dtype=torch.long)
    positions = torch.tensor([end - 1 + j for end, c in zip(prompt_ends, completions) for j in range(len(c))],
                             dtype=torch.long)
    targets = torch.tensor([t for c in completions for t in c], dtype=torch.long, device=states.device)
    picked = states[row_index.to(states.device), positions.to(states.device)]
    if head is not None:
        picked = head_logits(model, head, picked)
    nll = token_nll(picked.float(), targets).cpu()
    offset = 0
    for index, completion in zip(indices, completions):
        results[index] = (float(nll[offset:offset + len(completion)].sum()), len(completion)) if completion else (0.0, 0)
        offset += len(completion)


def perplexities(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    completions: Sequence[str],
    add_special_tokens: bool = False,
    batch_size: int = 8,
) -> list[Optional[float]]:
    """Perplexity of each completion given its prompt (None for an empty completion).

    Prompt and completion are tokenized separately and joined as ids, as the model produced them. Pass
    each prompt exactly as the model saw it (for chat models: the chat-templated text); `add_special_tokens`
    adds the tokenizer's BOS to the prompt for models that expect one and get a raw prompt.
    """
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    unique = list(dict.fromkeys(zip(prompts, completions)))  # the unsteered texts repeat across methods: score once
    prompt_ids = [tokenizer(p, add_special_tokens=add_special_tokens)["input_ids"] for p, _ in unique]
    completion_ids = [tokenizer(c, add_special_tokens=False)["input_ids"] for _, c in unique]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    values = {key: math.exp(nll / count) if count else None
              for key, (nll, count) in zip(unique, completion_nlls(model, prompt_ids, completion_ids, pad, batch_size))}
    return [values[key] for key in zip(prompts, completions)]


def perplexity(model: Any, tokenizer: Any, prompt: str, completion: str, add_special_tokens: bool = False) -> Optional[float]:
    """Perplexity of one completion given its prompt; see `perplexities`."""
    return perplexities(model, tokenizer, [prompt], [completion], add_special_tokens)[0]
