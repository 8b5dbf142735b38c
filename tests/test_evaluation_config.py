"""EvaluatorConfig: the evaluator's one set of defaults, checked at construction."""
from __future__ import annotations

import math

import pytest

from easyedit_split.evaluation import ManifoldOptions, PreferenceUtilityEvaluator
from easyedit_split.evaluation.config import EvaluatorConfig, form_sweep


def test_defaults():
    config = EvaluatorConfig()
    assert config.multipliers is None  # each method's form decides (form_sweep)
    assert (config.nll_mode, config.n_bootstrap, config.batch_size, config.layout) == ("sequence", 1000, 64, "packed")
    assert (config.utility_loss, config.frontier_max_loss, config.confidence) == (1.0, 3.0, 0.95)


def test_form_sweeps_follow_the_training_factors():
    # hand-written: EasyEdit trains vectors at 2..20 and LoRA / local weight at 0.2..2, step = top / 10
    vector = tuple(float(v) for v in range(-20, 21, 2))
    weight = tuple(round(v / 10, 10) for v in range(-20, 21, 2))
    assert form_sweep("vector") == vector and len(vector) == 21
    assert form_sweep("lora") == weight and form_sweep("local_weight") == weight
    assert form_sweep("vector", steering_factors=[1, 2, 3, 4, 5, 6, 7, 8]) == tuple(
        round(v * 0.8, 10) for v in range(-10, 11))
    assert EvaluatorConfig().sweep_for("lora") == weight
    assert EvaluatorConfig(multipliers=[-1, 0, 1]).sweep_for("lora") == (-1.0, 0.0, 1.0)  # an explicit sweep wins
    with pytest.raises(ValueError, match="intervention_method"):
        form_sweep("prefix")


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
    assert evaluator.config.multipliers == (0.0, 1.0)
    assert (evaluator.config.n_bootstrap, evaluator.config.nll_mode, evaluator.config.manifold_options()) == (5, "token", None)
    default = PreferenceUtilityEvaluator(model, None, manifold=False)
    assert default.config.multipliers is None  # per form: EvaluatorConfig().sweep_for(form)
    with pytest.raises(TypeError, match="multiplier"):
        PreferenceUtilityEvaluator(model, None, multiplier=[1.0])
