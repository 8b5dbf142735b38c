"""On real unseen polarity data, a CAA vector moves preference with m and costs utility at large |m|."""
from __future__ import annotations

import pytest

from easyedit_split.data import load_dataset
from easyedit_split.evaluation import PreferenceUtilityEvaluator
from easyedit_split.interventions import DynamicWeightUpdate
from easyedit_split.prompts import PromptFormat, encode_batch
from easyedit_split.fastpath.replay import capture_layer_inputs

pytestmark = pytest.mark.default_model

LAYER = 15


def _caa_vector(model, tokenizer, fmt, pairs):
    """Mean over pairs of (mean layer-15 output on matching - on not-matching completion tokens)."""
    means = []
    for field in ("matching", "not_matching"):
        batch = encode_batch(tokenizer, fmt, [p.question for p in pairs], [getattr(p, field) for p in pairs])
        hidden = capture_layer_inputs(model, batch, LAYER + 1).hidden_states  # = output of layer 15
        mask = (batch.labels != -100).unsqueeze(-1).float()
        means.append(((hidden * mask).sum(1) / mask.sum(1)).mean(0))
    return means[0] - means[1]


def test_caa_preference_rises_and_utility_falls_at_large_multipliers(default_model_and_tokenizer):
    model, tokenizer = default_model_and_tokenizer
    fmt = PromptFormat(use_chat_template=True)
    train = load_dataset("sentiment", "train")[:32]
    test = load_dataset("sentiment", "test")[:20]  # unseen pairs
    updates = {LAYER: DynamicWeightUpdate.from_vector(_caa_vector(model, tokenizer, fmt, train))}
    multipliers = [-8.0, -2.0, 0.0, 2.0, 8.0]
    evaluator = PreferenceUtilityEvaluator(model, tokenizer, fmt, multipliers=multipliers, n_bootstrap=200,
                                           manifold=False, progress=False)
    result = evaluator.evaluate(updates, test, name="caa")
    pref = result.metrics.preference.mean
    util = result.metrics.utility.mean
    zero = multipliers.index(0.0)
    assert pref[zero - 1] < pref[zero] < pref[zero + 1]               # preference rises with m around 0
    assert result.metrics.accuracy[zero + 1] >= result.metrics.accuracy[zero]
    assert util[0] < util[zero] - 1.0 and util[-1] < util[zero] - 1.0  # utility falls at |m| = 8
    assert not result.metrics.utility_undefined
