"""EvaluatorConfig: the evaluator's one set of defaults, checked at construction."""
from __future__ import annotations

import math

import pytest

from easyedit_split.evaluation import ManifoldOptions, PreferenceUtilityEvaluator
from easyedit_split.evaluation.config import EvaluatorConfig


def test_defaults():
    config = EvaluatorConfig()
    assert config.multipliers == (-8.0, -4.0, -2.0, -1.0, 0.0, 1.0, 2.0, 4.0, 8.0)
    assert (config.nll_mode, config.n_bootstrap, config.batch_size, config.layout) == ("sequence", 1000, 64, "packed")
    assert (config.utility_loss, config.frontier_max_loss, config.confidence) == (1.0, 3.0, 0.95)


def test_multipliers_are_sorted_floats():
    assert EvaluatorConfig(multipliers=[2, -2, 0]).multipliers == (-2.0, 0.0, 2.0)


@pytest.mark.parametrize("changes, words", [
    ({"multipliers": []}, "at least one"),
    ({"multipliers": [0.0, math.nan]}, "finite"),
    ({"multipliers": [math.inf]}, "finite"),
    ({"nll_mode": "tokens"}, "nll_mode"),
    ({"layout": "flat"}, "layout"),
    ({"batch_size": 0}, "batch_size"),
    ({"confidence": 1.0}, "confidence"),
    ({"manifold": "yes"}, "manifold"),
])
def test_bad_settings_fail_at_construction(changes, words):
    with pytest.raises(ValueError, match=words):
        EvaluatorConfig(**changes)


def test_manifold_true_follows_the_seed_and_false_turns_it_off():
    assert EvaluatorConfig(seed=7).manifold_options() == ManifoldOptions(seed=7)
    assert EvaluatorConfig().replace(seed=3).manifold_options().seed == 3
    assert EvaluatorConfig(manifold=False).manifold_options() is None
    assert EvaluatorConfig(manifold=ManifoldOptions(enabled=False)).manifold_options() is None


def test_evaluator_reads_config_and_keyword_overrides():
    import torch

    model = torch.nn.Linear(1, 1)
    evaluator = PreferenceUtilityEvaluator(model, None, config=EvaluatorConfig(multipliers=[1, 0], n_bootstrap=5),
                                           nll_mode="token", manifold=False)
    assert evaluator.multipliers == [0.0, 1.0]
    assert (evaluator.n_bootstrap, evaluator.nll_mode, evaluator.manifold) == (5, "token", None)
    default = PreferenceUtilityEvaluator(model, None, manifold=False)
    assert default.multipliers == list(EvaluatorConfig().multipliers)
    with pytest.raises(TypeError, match="multiplier"):
        PreferenceUtilityEvaluator(model, None, multiplier=[1.0])
