"""The batched, replayed, shared-prompt sweep equals plain full forwards, sequence by sequence."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from easyedit_split.evaluation.sweep_nll import EncodedPair, score_encoded_pairs
from easyedit_split.fastpath.replay import full_forward_nll
from easyedit_split.prompts import EncodedCompletion, collate
from conftest import seeded_update

SHAPES = [(5, 3, 4), (3, 6, 2), (7, 2, 2), (4, 4, 5), (1, 2, 3)]  # prompt, matching, not-matching lengths


def _pairs(seed=0):
    generator = torch.Generator().manual_seed(seed)
    ids = lambda n: tuple(torch.randint(3, 97, (n,), generator=generator).tolist())  # noqa: E731
    return [EncodedPair(ids(p), ids(a), ids(b)) for p, a, b in SHAPES]


def _update(model, method="lora", component="mlp_mid"):
    return seeded_update(model, method, component, seed=4, scale=0.3)


def _separate_full_forwards(model, pairs, updates, multiplier):
    """Reference: each completion its own sequence, one full forward per multiplier."""
    out = []
    for field in ("matching_ids", "not_matching_ids"):
        encoded = [EncodedCompletion(list(p.prompt_ids) + list(getattr(p, field)), len(p.prompt_ids)) for p in pairs]
        with torch.no_grad():
            out.append(full_forward_nll(model, collate(encoded, 0), updates, multiplier))
    return out


@pytest.mark.parametrize("layout", ["packed", "rows"])
@pytest.mark.slow
def test_sweep_equals_separate_full_forwards(tiny_model, layout):
    pairs = _pairs()
    updates = {2: _update(tiny_model)}
    multipliers = [-2.0, 0.0, 1.5]
    scores = score_encoded_pairs(tiny_model, pairs, updates, multipliers, layout=layout, batch_size=4)
    for k, m in enumerate(multipliers):
        matching, not_matching = _separate_full_forwards(tiny_model, pairs, updates, m)
        np.testing.assert_allclose(scores.matching_sum[k], matching.sum.double().numpy(), atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(scores.not_matching_sum[k], not_matching.sum.double().numpy(), atol=1e-5, rtol=1e-5)
        np.testing.assert_array_equal(scores.matching_tokens, matching.count.numpy())


@pytest.mark.slow
def test_multiplier_zero_reproduces_unsteered_model(tiny_model):
    """m = 0 equals a plain forward of the model with no hooks at all (log-softmax of its logits)."""
    pairs = _pairs(seed=5)
    scores = score_encoded_pairs(tiny_model, pairs, {1: _update(tiny_model, "vector", "block")}, [0.0, 3.0])
    for i, pair in enumerate(pairs):
        for field, result in (("matching_ids", scores.matching_sum), ("not_matching_ids", scores.not_matching_sum)):
            ids = torch.tensor([list(pair.prompt_ids) + list(getattr(pair, field))])
            with torch.no_grad():
                log_probs = torch.log_softmax(tiny_model(input_ids=ids).logits[0, :-1].double(), -1)
            start = len(pair.prompt_ids)
            targets = ids[0, start:]
            expected = -log_probs[start - 1:].gather(-1, targets.unsqueeze(-1)).sum().item()
            assert result[0, i] == pytest.approx(expected, abs=1e-5)
            assert abs(result[1, i] - expected) > 1e-4  # and steering changes it


def test_chunking_does_not_change_results(tiny_model):
    pairs = _pairs()
    updates = {1: _update(tiny_model, "local_weight", "attn")}
    big = score_encoded_pairs(tiny_model, pairs, updates, [-1.0, 1.0, 2.0], batch_size=64)
    small = score_encoded_pairs(tiny_model, pairs, updates, [-1.0, 1.0, 2.0], batch_size=1)
    np.testing.assert_allclose(big.matching_sum, small.matching_sum, atol=1e-5)
    np.testing.assert_allclose(big.not_matching_sum, small.not_matching_sum, atol=1e-5)


def test_token_mode_is_mean_over_completion_tokens(tiny_model):
    pairs = _pairs()
    scores = score_encoded_pairs(tiny_model, pairs, {}, [0.0], nll_mode="token")
    lengths = np.array([len(p.matching_ids) for p in pairs])
    np.testing.assert_allclose(scores.matching_nll[0], scores.matching_sum[0] / lengths)


def test_invalid_arguments_are_named(tiny_model):
    with pytest.raises(ValueError, match="nll_mode"):
        score_encoded_pairs(tiny_model, _pairs(), {}, [0.0], nll_mode="mean")
    with pytest.raises(ValueError, match="layout"):
        score_encoded_pairs(tiny_model, _pairs(), {}, [0.0], layout="tree")


def test_text_pairs_score_like_encode_batch(tiny_chat_model, default_tokenizer):
    """Real chat template: the pair encoding (JOIN_RULE, suffix) equals prompts.encode_batch's rows."""
    from easyedit_split.data import load_dataset
    from easyedit_split.evaluation.sweep_nll import score_pairs
    from easyedit_split.prompts import (
        PromptFormat,
        encode_batch,
        steering_prefix_length,
    )

    pairs = load_dataset("sentiment", "test")[:3]
    fmt = PromptFormat(use_chat_template=True)
    update = {1: _update(tiny_chat_model, "vector", "block")}
    scores = score_pairs(tiny_chat_model, default_tokenizer, pairs, update, [0.0, 2.0], fmt)
    for field, result in (("matching", scores.matching_sum), ("not_matching", scores.not_matching_sum)):
        batch = encode_batch(default_tokenizer, fmt, [p.question for p in pairs], [getattr(p, field) for p in pairs])
        prefix = steering_prefix_length(default_tokenizer, fmt)
        assert prefix > 0  # SmolLM2's system turn and user header stay unsteered, as in training
        steered = torch.arange(batch.input_ids.shape[1]).unsqueeze(0).expand_as(batch.input_ids) >= prefix
        with torch.no_grad():
            plain = full_forward_nll(tiny_chat_model, batch, update, 2.0, positions=steered)
        np.testing.assert_allclose(result[1], plain.sum.double().numpy(), atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("layout", ["packed", "rows"])
@pytest.mark.slow
def test_shared_unsteered_prefix_is_run_once_and_changes_nothing(tiny_model, layout):
    """Pairs sharing a 4-token prefix, steered from position 4: the prefix's keys/values are computed
    once and reused; results equal separate full forwards that steer positions >= 4 only."""
    shared = (5, 6, 7, 8)
    pairs = [EncodedPair(shared + p.prompt_ids, p.matching_ids, p.not_matching_ids) for p in _pairs(seed=3)]
    updates = {1: _update(tiny_model, "local_weight", "attn")}
    multipliers = [-1.0, 2.0]
    scores = score_encoded_pairs(tiny_model, pairs, updates, multipliers, layout=layout, batch_size=6, steer_from=4)
    assert_sweep_equals_plain(tiny_model, pairs, updates, multipliers, scores, steer_from=4)


def test_each_pairs_multipliers_are_replayed_together_without_padding(tiny_model, monkeypatch):
    """Slices hold a pair's K rows side by side (pairs sorted by length): with batch_size = K each
    replayed slice is exactly one packed row wide, so no padding is replayed (replayed shapes counted)."""
    from easyedit_split.evaluation import sweep_nll

    pairs, shapes = _pairs(seed=2), []
    original = sweep_nll.replay_hidden_after_prefix

    def counted(*args, **kwargs):
        hidden = original(*args, **kwargs)
        shapes.append(tuple(hidden.shape[:2]))
        return hidden

    monkeypatch.setattr(sweep_nll, "replay_hidden_after_prefix", counted)
    score_encoded_pairs(tiny_model, pairs, {1: _update(tiny_model, "vector", "block")}, [-1.0, 0.5, 2.0], batch_size=3)
    lengths = sorted(len(p.prompt_ids) + len(p.matching_ids) + len(p.not_matching_ids) for p in pairs)
    assert shapes == [(3, length) for length in lengths]  # no shared prefix here (steer_from 0)


def assert_sweep_equals_plain(model, pairs, updates, multipliers, scores, steer_from: int) -> None:
    """Each pair's sweep sums equal one full forward per completion and multiplier, steered from
    position `steer_from` on (the plain path the fast sweep must reproduce)."""
    for k, m in enumerate(multipliers):
        for field, result in (("matching_ids", scores.matching_sum), ("not_matching_ids", scores.not_matching_sum)):
            encoded = [EncodedCompletion(list(p.prompt_ids) + list(getattr(p, field)), len(p.prompt_ids)) for p in pairs]
            batch = collate(encoded, 0)
            steered = torch.arange(batch.input_ids.shape[1]).unsqueeze(0).expand_as(batch.input_ids) >= steer_from
            with torch.no_grad():
                plain = full_forward_nll(model, batch, updates, m, positions=steered)
            np.testing.assert_allclose(result[k], plain.sum.double().numpy(), atol=1e-5, rtol=1e-5)
