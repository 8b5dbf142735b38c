"""Method losses (split, sft, reps): the trainer's loss equals the formula recomputed by hand, and the
formulas on hand-built loss terms, every number worked out by hand in a comment.

The hand-built terms are chosen so that a pooled mean differs from a mean of per-row means, each
hinge is tested inactive, at its edge and active, and each reference guard with both signs, so
dropping a `relu`, a weight or the token pooling changes a value here.
"""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from conftest import build_tiny_model
from easyedit_split.hparams import RePSHyperParams, SFTHyperParams
from easyedit_split.methods import reps, sft, split
from easyedit_split.training import LossTerms, pooled_nll, step_loss
from test_training import (
    LAYER, WordTokenizer, fixed_plan, make_hparams, per_row_nll, random_update, synthetic_pairs, word_pairs,
)


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


def _t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def _terms(ref: bool = True, **overrides) -> LossTerms:
    """Two rows.  L_p = (3 + 1) / (1 + 3) = 1.0 (per-row means 3.0 and 0.33: their mean is 1.67).
    L_n = (6 + 2) / (3 + 1) = 2.0, so L_n - L_p = 1.0.
    L_p_ref = (2 + 0) / 4 = 0.5 (L_p above it by 0.5); L_n_ref = (10 + 2) / 4 = 3.0 (L_n below it by 1.0)."""
    values = dict(
        target_nll_sum=_t(3.0, 1.0), target_count=torch.tensor([1, 3]),
        opposite_nll_sum=_t(6.0, 2.0), opposite_count=torch.tensor([3, 1]),
        target_length=torch.tensor([5, 9]), opposite_length=torch.tensor([7, 4]),
        factors=_t(1.0, 2.0),
        target_ref_nll_sum=_t(2.0, 0.0) if ref else None,
        opposite_ref_nll_sum=_t(10.0, 2.0) if ref else None,
    )
    values.update(overrides)
    return LossTerms(**values)


def _split_hp(**overrides) -> SimpleNamespace:
    values = dict(pos_loss_weight=1.0, neg_loss_weight=0.5, margin_penalty_weight=3.0, margin_threshold=0.5,
                  ref_loss_weight=0.0)
    values.update(overrides)
    return SimpleNamespace(**values)


def test_pooled_nll_weights_rows_by_their_token_counts():
    assert pooled_nll(_t(3.0, 1.0), torch.tensor([1, 3])).item() == pytest.approx(1.0)
    assert pooled_nll(_t(0.0, 0.0), torch.tensor([0, 0])).item() == 0.0  # no tokens: 0, not NaN


@pytest.mark.parametrize(
    "threshold, expected",
    [
        (0.5, 2.0),    # margin inactive: relu(0.5 - 1.0) = 0  -> 1*1.0 + 0.5*2.0 = 2.0
        (1.0, 2.0),    # at its edge: relu(0) = 0            -> 2.0
        (1.75, 4.25),  # active: 3 * (1.75 - 1.0) = 2.25       -> 4.25
        (-2.0, 2.0),   # far inactive: a missing relu would give 2.0 + 3 * (-3.0) = -7.0
    ],
)
def test_split_margin_hinge(threshold, expected):
    loss = split.split_loss(_terms(ref=False), _split_hp(margin_threshold=threshold))
    assert loss.item() == pytest.approx(expected, abs=1e-12)


def test_split_margin_gradient_is_zero_when_inactive_and_pushes_apart_when_active():
    def grads(threshold):
        lp, ln = _t(3.0, 1.0).requires_grad_(), _t(6.0, 2.0).requires_grad_()
        terms = _terms(ref=False, target_nll_sum=lp, opposite_nll_sum=ln)
        split.split_loss(terms, _split_hp(margin_threshold=threshold, pos_loss_weight=0.0, neg_loss_weight=0.0)).backward()
        return lp.grad, ln.grad

    gp, gn = grads(0.5)
    assert torch.all(gp == 0) and torch.all(gn == 0)
    gp, gn = grads(1.75)
    # d/dL_p of 3 * (t - L_n + L_p) = +3, spread over 4 tokens: 0.75 per unit of summed NLL
    assert gp.tolist() == pytest.approx([0.75, 0.75]) and gn.tolist() == pytest.approx([-0.75, -0.75])


@pytest.mark.parametrize(
    "terms_kwargs, expected_guard",
    [
        ({}, 0.5),  # relu(1.0 - 0.5) + relu(2.0 - 3.0) = 0.5 + 0 (L_p above its reference, L_n below)
        (dict(target_ref_nll_sum=_t(6.0, 2.0), opposite_ref_nll_sum=_t(4.0, 0.0)), 1.0),  # relu(1-2) + relu(2-1) = 1
        (dict(target_ref_nll_sum=_t(8.0, 0.0), opposite_ref_nll_sum=_t(20.0, 0.0)), 0.0),  # both below: 0
        (dict(target_ref_nll_sum=_t(0.0, 0.0), opposite_ref_nll_sum=_t(0.0, 0.0)), 3.0),  # both above: 1 + 2
    ],
)
def test_split_reference_guard_both_signs(terms_kwargs, expected_guard):
    hp = _split_hp(ref_loss_weight=0.4)  # margin inactive (threshold 0.5 < 1.0): base loss 2.0
    loss = split.split_loss(_terms(**terms_kwargs), hp)
    assert loss.item() == pytest.approx(2.0 + 0.4 * expected_guard, abs=1e-12)


def test_split_weights_each_term():
    # 2 * 1.0 + 0.25 * 2.0 + 3 * relu(1.75 - 1.0) + 0.4 * 0.5 = 2 + 0.5 + 2.25 + 0.2
    hp = _split_hp(pos_loss_weight=2.0, neg_loss_weight=0.25, margin_threshold=1.75, ref_loss_weight=0.4)
    assert split.split_loss(_terms(), hp).item() == pytest.approx(4.95, abs=1e-12)
    assert split.needs_reference(hp) is True
    assert split.needs_reference(_split_hp(ref_loss_weight=0.0)) is False


def test_split_without_reference_weight_reads_no_reference():
    assert split.split_loss(_terms(ref=False), _split_hp(margin_threshold=1.75)).item() == pytest.approx(4.25)


def test_sft_is_the_weighted_pooled_nll_of_the_winner_only():
    hp = _split_hp(pos_loss_weight=2.5, neg_loss_weight=9.0, margin_penalty_weight=9.0, ref_loss_weight=9.0)
    assert sft.sft_loss(_terms(), hp).item() == pytest.approx(2.5 * 1.0, abs=1e-12)


def _reps_hp(**overrides) -> SimpleNamespace:
    values = dict(loss_type="dpo", beta=0.5, gemma=0.2, simpo_scaler=0.5, label_smoothing=0.0, reference_free=False)
    values.update(overrides)
    return SimpleNamespace(**values)


def _logsig(x: float) -> float:
    return -math.log1p(math.exp(-x))


# Row values: chosen c = -target_nll_sum = (-3, -1), rejected r = (-6, -2),
# c_ref = (-2, 0), r_ref = (-10, -2); |w| = (5, 9), |l| = (7, 4).
C, R, C_REF, R_REF, W, L = (-3.0, -1.0), (-6.0, -2.0), (-2.0, 0.0), (-10.0, -2.0), (5, 9), (7, 4)


def _mean(f) -> float:
    return sum(f(i) for i in range(2)) / 2


@pytest.mark.parametrize(
    "hp, expected",
    [
        # dpo: h = (c - r) - (c_ref - r_ref) = (3 - 8, 1 - 2) = (-5, -1)
        (_reps_hp(), _mean(lambda i: -_logsig(0.5 * ((C[i] - R[i]) - (C_REF[i] - R_REF[i]))))),
        (_reps_hp(reference_free=True), _mean(lambda i: -_logsig(0.5 * (C[i] - R[i])))),
        (_reps_hp(label_smoothing=0.2), _mean(lambda i: -0.8 * _logsig(0.5 * ((C[i] - R[i]) - (C_REF[i] - R_REF[i])))
                                                - 0.2 * _logsig(-0.5 * ((C[i] - R[i]) - (C_REF[i] - R_REF[i]))))),
        # ipo: (h - 1 / (2 beta))^2 = (h - 1)^2
        (_reps_hp(loss_type="ipo"), _mean(lambda i: ((C[i] - R[i]) - (C_REF[i] - R_REF[i]) - 1.0) ** 2)),
        (_reps_hp(loss_type="simpo"), _mean(lambda i: -_logsig(0.5 / W[i] * C[i] - 0.5 / L[i] * R[i] - 0.2))),
        # scaled_simpo: scale = max((r_ref - c_ref) * 0.5, 1) = max((-4, -1), 1) = 1 ... and with scaler 2: (−16, −4) -> 1
        (_reps_hp(loss_type="scaled_simpo"), _mean(lambda i: -_logsig(max((R_REF[i] - C_REF[i]) * 0.5, 1.0) / W[i] * C[i] - R[i] / L[i]))),
        (_reps_hp(loss_type="apo_zero"), _mean(lambda i: -_logsig(0.5 * (C[i] - C_REF[i])) + _logsig(0.5 * (R[i] - R_REF[i])))),
    ],
    ids=["dpo", "dpo-reference-free", "dpo-smoothing", "ipo", "simpo", "scaled_simpo", "apo_zero"],
)
def test_reps_losses_on_hand_numbers(hp, expected):
    assert reps.reps_loss(_terms(), hp).item() == pytest.approx(expected, rel=1e-12)


def test_reps_scaled_simpo_scale_above_one():
    # rejected reference more likely than chosen reference: r_ref - c_ref = (8, 2) * 0.5 = (4, 1) -> scale (4, 1)
    terms = _terms(target_ref_nll_sum=_t(10.0, 2.0), opposite_ref_nll_sum=_t(2.0, 0.0))
    expected = _mean(lambda i: -_logsig((4.0, 1.0)[i] / W[i] * C[i] - R[i] / L[i]))
    assert reps.reps_loss(terms, _reps_hp(loss_type="scaled_simpo")).item() == pytest.approx(expected, rel=1e-12)


def test_reps_rejects_unknown_loss_type():
    with pytest.raises(ValueError, match="loss_type"):
        reps.reps_loss(_terms(), _reps_hp(loss_type="kto"))


def test_sft_warning_names_the_ignored_keys_and_the_alternative(caplog):
    import logging

    with caplog.at_level(logging.WARNING, logger="easyedit_split.methods.sft"):
        sft._warn_ignored(_split_hp(neg_loss_weight=0.0, margin_penalty_weight=2.0, ref_loss_weight=0.0))
    assert caplog.messages == [
        "sft trains only the positive term; {'margin_penalty_weight': 2.0} ignored (use alg_name: split for them)"
    ]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="easyedit_split.methods.sft"):
        sft._warn_ignored(_split_hp(neg_loss_weight=0.0, margin_penalty_weight=0.0))
    assert caplog.messages == []
