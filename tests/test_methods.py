"""Method losses (split, sft, reps): the trainer's loss equals the formula recomputed by hand."""
from __future__ import annotations

import math

import pytest
import torch

from conftest import build_tiny_model
from easyedit_split.hparams import RePSHyperParams, SFTHyperParams
from easyedit_split.methods import reps, sft, split
from easyedit_split.training import step_loss
from test_training import LAYER, WordTokenizer, fixed_plan, make_hparams, per_row_nll, random_update, synthetic_pairs, word_pairs

FACTORS = [2.0, -1.0, 3.0, -2.5]


def _relu(x: float) -> float:
    return max(0.0, x)


@pytest.fixture(scope="module")
def setting():
    """Model, data, an update and per-row NLLs computed with one full forward per row."""
    model = build_tiny_model("llama")
    prepared = synthetic_pairs()
    update = random_update(model, "vector")
    plan = fixed_plan(FACTORS)
    rows = torch.cat([plan.target_rows, plan.opposite_rows])
    factors = torch.cat([plan.factors, plan.factors])
    with torch.no_grad():
        sums, counts = per_row_nll(model, prepared, update, rows, factors)
        ref_sums, _ = per_row_nll(model, prepared, update, rows, torch.zeros_like(factors))
    prepared.capture(model, LAYER)
    n = len(plan)
    table = {
        "target": (sums[:n].tolist(), counts[:n].tolist()),
        "opposite": (sums[n:].tolist(), counts[n:].tolist()),
        "target_ref": ref_sums[:n].tolist(),
        "opposite_ref": ref_sums[n:].tolist(),
        "target_len": prepared.lengths[plan.target_rows].tolist(),
        "opposite_len": prepared.lengths[plan.opposite_rows].tolist(),
    }
    return model, prepared, update, plan, table


def _chunks(values, size=2):
    return [values[i : i + size] for i in range(0, len(values), size)]


def _pooled(sums, counts):
    return sum(sums) / sum(counts)


def test_split_loss_matches_hand_formula(setting):
    model, prepared, update, plan, t = setting
    hp = make_hparams(pos_loss_weight=1.0, neg_loss_weight=0.5, margin_penalty_weight=8.0, margin_threshold=5.0,
                      ref_loss_weight=0.7)
    expected = []
    for idx in _chunks(list(range(4))):
        lp = _pooled([t["target"][0][i] for i in idx], [t["target"][1][i] for i in idx])
        ln = _pooled([t["opposite"][0][i] for i in idx], [t["opposite"][1][i] for i in idx])
        lp_ref = _pooled([t["target_ref"][i] for i in idx], [t["target"][1][i] for i in idx])
        ln_ref = _pooled([t["opposite_ref"][i] for i in idx], [t["opposite"][1][i] for i in idx])
        expected.append(1.0 * lp + 0.5 * ln + 8.0 * _relu(5.0 - (ln - lp)) + 0.7 * (_relu(lp - lp_ref) + _relu(ln - ln_ref)))
    got = step_loss(model, prepared, LAYER, update, plan, split.split_loss, hp, needs_reference=True)
    assert got.item() == pytest.approx(sum(expected) / len(expected), rel=1e-5)


def test_split_without_reference_weight_does_not_need_references(setting):
    model, prepared, update, plan, _ = setting
    hp = make_hparams(ref_loss_weight=0.0)
    assert not split.needs_reference(hp)
    step_loss(model, prepared, LAYER, update, plan, split.split_loss, hp, needs_reference=False)  # no KeyError/TrainingError


def test_sft_loss_is_the_pooled_nll_of_the_winning_completion(setting):
    model, prepared, update, plan, t = setting
    hp = SFTHyperParams(layers=[LAYER], batch_size=2, pos_loss_weight=1.0)
    expected = [
        _pooled([t["target"][0][i] for i in idx], [t["target"][1][i] for i in idx]) for idx in _chunks(list(range(4)))
    ]
    got = step_loss(model, prepared, LAYER, update, plan, sft.sft_loss, hp)
    assert got.item() == pytest.approx(sum(expected) / 2, rel=1e-5)


def _logsigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x > 0 else x - math.log1p(math.exp(x))


def _reps_row(i, t, hp) -> float:
    c, r = -t["target"][0][i], -t["opposite"][0][i]
    c_ref, r_ref = -t["target_ref"][i], -t["opposite_ref"][i]
    lw, ll = t["target_len"][i], t["opposite_len"][i]
    if hp.loss_type == "scaled_simpo":
        scale = max((r_ref - c_ref) * hp.simpo_scaler, 1.0)
        return -_logsigmoid(scale / lw * c - r / ll)
    if hp.loss_type == "simpo":
        return -_logsigmoid(hp.beta / lw * c - hp.beta / ll * r - hp.gemma)
    h = (c - r) - (0.0 if hp.reference_free else (c_ref - r_ref))
    if hp.loss_type == "dpo":
        s = hp.label_smoothing
        return -_logsigmoid(hp.beta * h) * (1 - s) - _logsigmoid(-hp.beta * h) * s
    if hp.loss_type == "ipo":
        return (h - 1 / (2 * hp.beta)) ** 2
    return -_logsigmoid(hp.beta * (c - c_ref)) + _logsigmoid(hp.beta * (r - r_ref))  # apo_zero


@pytest.mark.parametrize(
    "loss_type,extra",
    [("scaled_simpo", {"simpo_scaler": 0.5}), ("simpo", {"beta": 2.0, "gemma": 0.3}),
     ("dpo", {"beta": 0.5, "label_smoothing": 0.1}), ("dpo", {"reference_free": True}),
     ("ipo", {"beta": 0.8}), ("apo_zero", {"beta": 0.3})],
)
def test_reps_loss_matches_hand_formula(setting, loss_type, extra):
    model, prepared, update, plan, t = setting
    hp = RePSHyperParams(layers=[LAYER], batch_size=2, loss_type=loss_type, **extra)
    expected = [sum(_reps_row(i, t, hp) for i in idx) / len(idx) for idx in _chunks(list(range(4)))]
    got = step_loss(model, prepared, LAYER, update, plan, reps.reps_loss, hp, needs_reference=reps.needs_reference(hp))
    assert got.item() == pytest.approx(sum(expected) / 2, rel=1e-5)


def test_reps_reference_needs():
    assert reps.needs_reference(RePSHyperParams(loss_type="scaled_simpo"))
    assert not reps.needs_reference(RePSHyperParams(loss_type="simpo"))
    assert not reps.needs_reference(RePSHyperParams(loss_type="dpo", reference_free=True))


@pytest.mark.parametrize("module,hparams_class", [(split, None), (sft, SFTHyperParams), (reps, RePSHyperParams)])
@pytest.mark.parametrize("method", ["vector", "lora", "local_weight"])
def test_method_train_entry_points_return_one_update_per_layer(module, hparams_class, method):
    model = build_tiny_model("qwen2")
    common = dict(layers=[1, LAYER], batch_size=2, n_epochs=1, intervention_method=method, low_rank_dimension=2,
                  use_chat_template=False, dropout=0.0)
    hp = make_hparams(**common) if hparams_class is None else hparams_class(**common)
    result = module.train(hp, word_pairs(4), model, WordTokenizer(), progress=False)
    assert sorted(result) == [1, LAYER]
    assert all(u.method == method for u in result.values())


def test_sft_warns_about_ignored_weights(caplog):
    model = build_tiny_model("llama")
    hp = SFTHyperParams(layers=[LAYER], batch_size=2, n_epochs=1, margin_penalty_weight=3.0, use_chat_template=False)
    with caplog.at_level("WARNING"):
        sft.train(hp, word_pairs(2), model, WordTokenizer(), progress=False)
    assert "margin_penalty_weight" in caplog.text

