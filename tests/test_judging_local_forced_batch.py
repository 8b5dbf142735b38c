"""LocalJudge's forced ratings: one left-padded batch, the LM head at the last position only, and the
same ratings as one full forward per prompt (the plain path, computed here by hand)."""
from __future__ import annotations

import pytest
import torch

from easyedit_split.judging import LocalJudge
from easyedit_split.judging.parsing import parse_rating

CONTEXTS_TEXT = ["hello.", "A much longer text that needs more tokens than the first one, by a margin.", "Mid length text."]


def _plain_expected(model, tokenizer, context: list[int]) -> float:
    """The unbatched full-logits path: one forward of batch 1, every position through the LM head."""
    suffix = tokenizer("\nRating: ", add_special_tokens=False)["input_ids"]
    digits = [tokenizer(str(d), add_special_tokens=False)["input_ids"][0] for d in range(3)]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([context + suffix])).logits[0, -1].float()
    p = torch.softmax(logits[digits], dim=-1)
    return float((p * torch.arange(3.0)).sum())


@pytest.mark.parametrize("batch_size", [1, 2, 8])
def test_batched_forced_ratings_equal_the_unbatched_full_forward(tiny_chat_model, default_tokenizer, batch_size):
    judge = LocalJudge(tiny_chat_model, default_tokenizer, max_new_tokens=0, force_rating="expected",
                       batch_size=batch_size)
    contexts = [judge._encode(text) for text in CONTEXTS_TEXT]
    assert len({len(c) for c in contexts}) == 3  # different lengths: the batch is really padded
    got = [parse_rating(f"Rating: {text}") for text in judge.forced_ratings(contexts)]
    want = [_plain_expected(tiny_chat_model, default_tokenizer, c) for c in contexts]
    assert got == pytest.approx(want, abs=1.5e-3)  # the texts carry 3 decimals
    answers = judge.generate_batch(CONTEXTS_TEXT)  # the judge's own entry point, batched
    assert [parse_rating(a) for a in answers] == pytest.approx(want, abs=1.5e-3)


def test_last_logits_match_full_forward_and_head_sees_last_positions_only(tiny_chat_model, default_tokenizer):
    judge = LocalJudge(tiny_chat_model, default_tokenizer, max_new_tokens=0, force_rating="expected", batch_size=8)
    contexts = [judge._encode(text) for text in CONTEXTS_TEXT]
    shapes = []
    handle = tiny_chat_model.lm_head.register_forward_hook(lambda m, i, o: shapes.append(tuple(i[0].shape)))
    try:
        batched = judge._last_logits(contexts)
    finally:
        handle.remove()
    assert shapes == [(3, tiny_chat_model.config.hidden_size)]  # one call, one row per prompt
    with torch.no_grad():
        for row, context in zip(batched, contexts):
            full = tiny_chat_model(input_ids=torch.tensor([context])).logits[0, -1]
            torch.testing.assert_close(row, full, atol=2e-5, rtol=1e-4)
