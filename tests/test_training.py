"""The shared trainer: fast path == plain path, factor semantics, seeds, NaN handling, resume, and
settings with observable effects (`max_num_of_examples` uses exactly the first N pairs;
`output_length` that cuts a completion off is an error naming the pair and the value).

Expectations: the plain full forward (the fast path's reference), hand-built synthetic pairs, a
hook written from the null-it-out formula, a second training on exactly the pairs that should be
used. The loss assembly against hand-computed terms: tests/test_training_losses.py.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

from conftest import build_tiny_model
from easyedit_split import producing, training
from easyedit_split.data import PolarityPair
from easyedit_split.editor import SteerEditor
from easyedit_split.errors import HparamsError, TrainingError
from easyedit_split.hparams import SFTHyperParams, SplitHyperParams
from easyedit_split.interventions import DynamicWeightUpdate
from easyedit_split.methods.split import split_loss
from easyedit_split.prepared_pairs import PreparedPairs, prepare_pairs
from easyedit_split.producing import ConceptSaver
from easyedit_split.prompts import IGNORE_INDEX, TokenBatch
from easyedit_split.fastpath.replay import full_forward_nll
from easyedit_split.storage.files import safe_torch_load
from easyedit_split.training import StepPlan, concept_groups, plan_step, step_loss, train_layer, train_method
from easyedit_split.prompts import PromptFormat, encode_completion
from reference import hand_steering


LAYER = 2


# ----------------------------------------------------------------------------- helpers


def make_hparams(**overrides) -> SplitHyperParams:
    values = dict(
        layers=[LAYER], batch_size=2, gradient_accumulation_steps=1, n_epochs=2, lr=0.05, weight_decay=0.0,
        dropout=0.0, pos_loss_weight=1.0, neg_loss_weight=0.5, margin_penalty_weight=2.0, ref_loss_weight=0.0,
        margin_threshold=0.3, steering_factors=[1.0, 2.0, 3.0], preference_pairs=["orig_add", "orig_sub"],
        intervention_method="vector", intervention_components="mlp_mid", low_rank_dimension=2, seed=7,
        use_chat_template=False, max_concepts=None,
    )
    values.update(overrides)
    return SplitHyperParams(**values)


def synthetic_pairs(n_examples=6, prompt=4, vocab=97, seed=3, shared=0) -> PreparedPairs:
    """Rows 2i / 2i+1 share a random prompt; completions of different lengths (3..5 tokens).

    The first `shared` prompt tokens are the same in every row (a chat template's common prefix).
    """
    generator = torch.Generator().manual_seed(seed)
    common = torch.randint(3, vocab, (shared,), generator=generator).tolist()
    rows, prompts = [], []
    for i in range(n_examples):
        head = common + torch.randint(3, vocab, (prompt - shared,), generator=generator).tolist()
        for completion_length in (3 + i % 2, 5 - i % 3):
            rows.append(head + torch.randint(3, vocab, (completion_length,), generator=generator).tolist())
            prompts.append(prompt)
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, IGNORE_INDEX)
    for r, (row, p) in enumerate(zip(rows, prompts)):
        ids[r, : len(row)] = torch.tensor(row)
        mask[r, : len(row)] = 1
        labels[r, p : len(row)] = ids[r, p : len(row)]
    return PreparedPairs(TokenBatch(ids, mask, labels), prefix_length=0)


def random_update(model, method, seed=5, std=0.2):
    torch.manual_seed(seed)
    update = DynamicWeightUpdate.for_model(model, method, component="mlp_mid" if method != "vector" else "block", rank=2)
    with torch.no_grad():
        for p in update.parameters():
            p.normal_(0, std)
    return update


def fixed_plan(factors, null=None, chunk=2) -> StepPlan:
    """Examples 0, 1: orig_add and orig_sub rows with the given factors."""
    targets = torch.tensor([0, 1, 2, 3])
    opposites = torch.tensor([1, 0, 3, 2])
    null = torch.zeros(4, dtype=torch.bool) if null is None else torch.tensor(null)
    return StepPlan(targets, opposites, torch.tensor(factors, dtype=torch.float32), null, chunk)


def per_row_nll(model, prepared, update, rows, factors):
    """Independent expectation: one full forward per row (replay.full_forward_nll)."""
    sums, counts = [], []
    for row, factor in zip(rows.tolist(), factors.tolist()):
        b = prepared.batch
        single = TokenBatch(b.input_ids[row : row + 1], b.attention_mask[row : row + 1], b.labels[row : row + 1])
        nll = full_forward_nll(model, single, {LAYER: update}, factor)
        sums.append(nll.sum[0])
        counts.append(nll.count[0])
    return torch.stack(sums), torch.stack(counts)


class WordTokenizer:
    """A tokenizer stub for tiny models: one id per word, BOS first, no chat template."""

    chat_template = None
    pad_token_id = 0
    bos_token_id = 1

    def __call__(self, text, add_special_tokens=True):
        ids = [3 + sum(map(ord, word)) % 90 for word in text.split()]
        return {"input_ids": ([1] if add_special_tokens else []) + ids}


def word_pairs(n=6, concept_id=0):
    return [
        PolarityPair(f"question number {i} about topic {concept_id}", "good great fine", "bad awful poor",
                     concept_id=concept_id, concept=f"concept {concept_id}")
        for i in range(n)
    ]


# ----------------------------------------------------------------------------- factor semantics


def test_orig_add_draws_factors_and_orig_sub_negates_and_swaps():
    hp = make_hparams(steering_factors=[2.0, 5.0], substraction_type="normal")
    plan = plan_step([0, 3], hp, torch.Generator().manual_seed(0))
    assert plan.target_rows.tolist() == [0, 1, 6, 7]  # example-major, then pair; sub: not-matching wins
    assert plan.opposite_rows.tolist() == [1, 0, 7, 6]
    add, sub = plan.factors[0::2], plan.factors[1::2]
    assert all(f in (2.0, 5.0) for f in add.tolist())
    assert all(f in (-2.0, -5.0) for f in sub.tolist())
    assert not plan.null_rows.any()


def test_null_it_out_uses_factor_zero_and_marks_rows():
    hp = make_hparams(substraction_type="null_it_out")
    plan = plan_step([0, 1, 2], hp, torch.Generator().manual_seed(0))
    assert plan.factors[1::2].tolist() == [0.0, 0.0, 0.0]
    assert plan.null_rows.tolist() == [False, True] * 3
    assert all(f > 0 for f in plan.factors[0::2].tolist())


def test_factor_draws_are_uniform_over_steering_factors():
    hp = make_hparams(steering_factors=[1.0, 2.0, 3.0, 4.0], preference_pairs=["orig_add"])
    plan = plan_step(list(range(2000)), hp, torch.Generator().manual_seed(1))
    counts = torch.stack([(plan.factors == f).sum() for f in (1.0, 2.0, 3.0, 4.0)]).float()
    assert (counts / 2000 - 0.25).abs().max() < 0.04


def test_steered_pairs_are_rejected_with_a_clear_error():
    hp = make_hparams(preference_pairs=["orig_add", "steered_add"])
    with pytest.raises(HparamsError, match="steered"):
        training._check_supported(hp)


# ----------------------------------------------------------------------------- fast == plain


def nll_gradient_scale(model, prepared, update_factory, plan, dropout, seed):
    """Largest gradient entry of the sum of the step's completion NLLs (plain path): the scale of the
    terms a loss combines. A loss gradient that cancels them is only as precise as eps x this scale."""
    update = update_factory()
    target, opposite = training._steered_nll(model, prepared, LAYER, update, plan, dropout,
                                             torch.Generator().manual_seed(seed), False)
    (target.sum.sum() + opposite.sum.sum()).backward()
    return max(float(p.grad.abs().max()) for p in update.parameters())


def fast_and_plain(model, prepared, method, plan, hp, seed=0, std=0.2):
    """Loss and gradients of one step on the shared-prompt fast path and the unshared plain path."""
    results = []
    for fast in (True, False):
        update = random_update(model, method, std=std)
        if fast:
            prepared.capture(model, LAYER)
        loss = step_loss(model, prepared, LAYER, update, plan, split_loss, hp, needs_reference=True, fast=fast,
                         generator=torch.Generator().manual_seed(seed))  # the same positions dropout on both paths
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in update.named_parameters()}))
    return results


def assert_same_step(results, scale):
    (fast_loss, fast_grads), (plain_loss, plain_grads) = results
    torch.testing.assert_close(fast_loss, plain_loss, rtol=1e-5, atol=1e-5)
    for name in fast_grads:  # 1e-5, relative to the NLL terms' gradient scale when that exceeds 1
        torch.testing.assert_close(fast_grads[name], plain_grads[name], rtol=1e-5, atol=1e-5 * max(1.0, scale))
    assert any(g.abs().sum() > 0 for g in fast_grads.values())


@pytest.mark.parametrize("method", ["vector", "lora", "local_weight"])
def test_fast_path_loss_and_gradients_equal_plain_full_forward(tiny_model, method):
    """Shared prompt pass (packed rows) vs one full forward per completion: padding (completions of
    3..5 tokens), a steered prompt, null_it_out rows and references."""
    prepared = synthetic_pairs()
    prepared.prefix_length = 2  # steer from position 2 on, as after a chat-template prefix
    hp = make_hparams(intervention_method=method, ref_loss_weight=0.7, substraction_type="null_it_out")
    plan = fixed_plan([2.0, 0.0, 1.5, 0.0], null=[False, True, False, True])
    scale = nll_gradient_scale(tiny_model, prepared, lambda: random_update(tiny_model, method), plan, 0.0, 0)
    assert_same_step(fast_and_plain(tiny_model, prepared, method, plan, hp), scale)


@pytest.mark.parametrize("method", ["vector", "lora", "local_weight"])
def test_prefix_cached_fast_path_equals_plain_full_forward(tiny_model, method):
    """A 5-token prefix shared by every row is computed once; steps replay only what follows it,
    with positions dropout (one draw per packed row, read by both paths)."""
    prepared = synthetic_pairs(prompt=7, shared=5)
    prepared.prefix_length = 6  # steered from 6 on; only the 5 shared tokens can be cached
    hp = make_hparams(intervention_method=method, ref_loss_weight=0.7, substraction_type="null_it_out",
                      intervention_positions_dropout=0.3)
    plan = StepPlan(torch.tensor([0, 3, 8]), torch.tensor([1, 2, 9]), torch.tensor([2.0, 0.0, -1.5]),
                    torch.tensor([False, True, False]), 2)
    prepared.capture(tiny_model, LAYER)
    assert prepared.prefix_cache.length == 5
    # std 0.5: a random update that moves every steered NLL well away from its reference, so the
    # reference term's relu is not evaluated at its kink (where fp32 noise alone picks the gradient)
    scale = nll_gradient_scale(tiny_model, prepared, lambda: random_update(tiny_model, method, std=0.5), plan, 0.3, 0)
    assert_same_step(fast_and_plain(tiny_model, prepared, method, plan, hp, std=0.5), scale)


def test_shared_prompt_pass_equals_unshared_in_float64():
    """In float64 the packed fast path equals the plain path far below fp32 noise (no logic slack
    hidden in the fp32 tolerance): Gemma2 (sliding windows), LoRA, prefix cache, positions dropout."""
    model = build_tiny_model("gemma2").double()
    prepared = synthetic_pairs(prompt=7, shared=5)
    prepared.prefix_length = 6
    plan = StepPlan(torch.tensor([0, 3, 8]), torch.tensor([1, 2, 9]), torch.tensor([2.0, 0.0, -1.5]),
                    torch.tensor([False, True, False]), 2)
    results = []
    for fast in (True, False):
        update = random_update(model, "lora").double()
        if fast:
            prepared.capture(model, LAYER)
        target, opposite = training._steered_nll(model, prepared, LAYER, update, plan, 0.3,
                                                 torch.Generator().manual_seed(0), fast)
        (target.sum * torch.tensor([1.0, -2.0, 0.5])).sum().add(opposite.sum.sum()).backward()
        results.append([p.grad.clone() for p in update.parameters()])
    for fast_grad, plain_grad in zip(*results):
        torch.testing.assert_close(fast_grad, plain_grad, rtol=1e-7, atol=1e-9)


def test_plain_and_fast_row_nll_equal_full_forward_nll(tiny_model):
    prepared = synthetic_pairs()
    update = random_update(tiny_model, "lora")
    plan = StepPlan(torch.tensor([0, 3, 4, 9]), torch.tensor([1, 2, 5, 8]), torch.tensor([1.0, -2.0, 0.5, 3.0]),
                    torch.zeros(4, dtype=torch.bool), 2)
    expected_target = per_row_nll(tiny_model, prepared, update, plan.target_rows, plan.factors)
    expected_opposite = per_row_nll(tiny_model, prepared, update, plan.opposite_rows, plan.factors)
    prepared.capture(tiny_model, LAYER)
    for fast in (True, False):
        target, opposite = training._steered_nll(tiny_model, prepared, LAYER, update, plan, 0.0, None, fast)
        for got, (expected_sum, expected_count) in ((target, expected_target), (opposite, expected_opposite)):
            torch.testing.assert_close(got.sum, expected_sum, rtol=1e-5, atol=1e-5)
            assert got.count.tolist() == expected_count.tolist()


def test_null_it_out_removes_the_positive_component_along_v():
    model = build_tiny_model("qwen2")
    prepared = synthetic_pairs()
    update = random_update(model, "vector")
    v = update.bias.detach()

    def project(x, h):  # written from the formula h' = h - relu(h.v)/|v|^2 v
        return -torch.relu(h @ v).unsqueeze(-1) / (v @ v) * v

    plan = StepPlan(torch.tensor([1, 2]), torch.tensor([0, 3]), torch.zeros(2), torch.tensor([True, True]), 2)
    with hand_steering(model, {LAYER: project}):
        expected, _ = per_row_nll(model, prepared, random_update(model, "vector"), plan.target_rows, torch.zeros(2))
        expected_opposite, _ = per_row_nll(model, prepared, random_update(model, "vector"), plan.opposite_rows,
                                           torch.zeros(2))
    prepared.capture(model, LAYER)
    target, opposite = training._steered_nll(model, prepared, LAYER, update, plan, 0.0, None, True)
    torch.testing.assert_close(target.sum, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(opposite.sum, expected_opposite, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- training behaviour


def test_same_seed_gives_identical_update_and_different_seed_differs():
    model = build_tiny_model("llama")
    hp = make_hparams(dropout=0.1, n_epochs=1)
    first, _ = train_layer(model, synthetic_pairs(), hp, LAYER, split_loss, progress=False)
    second, _ = train_layer(model, synthetic_pairs(), hp, LAYER, split_loss, progress=False)
    other, _ = train_layer(model, synthetic_pairs(), dataclasses.replace(hp, seed=8), LAYER, split_loss, progress=False)
    assert torch.equal(first.bias, second.bias)
    assert not torch.equal(first.bias, other.bias)


def test_base_model_is_frozen_during_training_and_restored_after():
    model = build_tiny_model("gemma2")
    model.train()
    seen = []

    def spy(terms, hparams):
        seen.append((model.training, any(p.requires_grad for p in model.parameters())))
        return split_loss(terms, hparams)

    train_layer(model, synthetic_pairs(), make_hparams(n_epochs=1), LAYER, spy, progress=False)
    assert seen and all(state == (False, False) for state in seen)
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert all(p.grad is None for p in model.parameters())


def test_schedule_is_linear_decay_without_warmup():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.4)
    scheduler = training.linear_decay(optimizer, 4)
    rates = []
    for _ in range(6):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates == pytest.approx([0.4, 0.3, 0.2, 0.1, 0.0, 0.0], abs=1e-12)
    stalled = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.4)
    training.linear_decay(stalled, 0)
    assert stalled.param_groups[0]["lr"] == 0.0  # 0 scheduled steps: learning rate 0, as in EasyEdit


def test_gradient_accumulation_counts_optimizer_steps_as_easyedit():
    model = build_tiny_model("llama")
    hp = make_hparams(batch_size=2, gradient_accumulation_steps=2, n_epochs=2)  # 3 batches per epoch
    _, log = train_layer(model, synthetic_pairs(n_examples=6), hp, LAYER, split_loss, progress=False)
    assert len(log.losses) == 6
    assert log.optimizer_steps == 4  # after batch 2 and at the end of each epoch


@pytest.mark.parametrize("method", ["vector", "lora", "local_weight"])
def test_every_intervention_form_trains(method):
    model = build_tiny_model("llama")
    hp = make_hparams(intervention_method=method, n_epochs=4, lr=0.02, preference_pairs=["orig_add"])
    before = training.new_update(model, hp)
    update, log = train_layer(model, synthetic_pairs(), hp, LAYER, split_loss, progress=False)
    assert update.method == method
    changed = [not torch.equal(p, q) for p, q in zip(update.parameters(), before.parameters())]
    assert any(changed)
    assert sum(log.losses[-3:]) < sum(log.losses[:3])


def _preference(model, prepared, update, factor):
    """Mean over examples of NLL(not matching) - NLL(matching), sequence NLL (PrefOdds)."""
    rows = torch.arange(len(prepared.batch))
    nll = full_forward_nll(model, prepared.batch, {LAYER: update}, factor).sum
    return (nll[rows % 2 == 1] - nll[rows % 2 == 0]).mean().item()


def test_training_moves_held_out_preference_towards_matching():
    """Synthetic task: matching completions are one token pattern, not-matching another."""
    model = build_tiny_model("llama", num_layers=4)

    def task(seed, n):
        generator = torch.Generator().manual_seed(seed)
        rows = []
        for _ in range(n):
            prompt = torch.randint(40, 97, (4,), generator=generator).tolist()
            rows += [prompt + [10, 11, 12], prompt + [20, 21, 22]]
        ids = torch.tensor(rows)
        labels = ids.clone()
        labels[:, :4] = IGNORE_INDEX
        return PreparedPairs(TokenBatch(ids, torch.ones_like(ids), labels))

    hp = make_hparams(n_epochs=6, lr=0.1, batch_size=4, steering_factors=[1.0, 2.0], neg_loss_weight=0.0)
    train_data, held_out = task(1, 16), task(2, 8)
    untrained = training.new_update(model, hp)
    update, _ = train_layer(model, train_data, hp, LAYER, split_loss, progress=False)
    base = _preference(model, held_out, untrained, 0.0)
    steered = _preference(model, held_out, update, 1.0)
    against = _preference(model, held_out, update, -1.0)
    assert steered > base + 1.0
    assert against < base


# ----------------------------------------------------------------------------- NaN, saving, resume


def _train_saving(hp, pairs, model, loss, out):
    """The trainer with `producing`'s saver attached, as `producing.train_and_save` runs it."""
    groups = concept_groups(pairs, hp)  # once, shared by the saver and the trainer
    saver = ConceptSaver(out, hp, groups, model, None, {})
    return train_method("split", hp, groups, model, WordTokenizer(), loss, progress=False,
                        finished=saver.finished(), on_trained=saver)


def test_a_saved_run_groups_its_pairs_by_concept_once(tmp_path, monkeypatch):
    """`producing` groups once and hands the grouping to the saver and the trainer, which use it as given."""
    calls = []

    def counting(pairs, hp):
        calls.append(len(pairs))
        return concept_groups(pairs, hp)

    monkeypatch.setattr(producing, "concept_groups", counting)
    monkeypatch.setattr(training, "concept_groups", counting)
    model = build_tiny_model("llama")
    result = producing.train_and_save(make_hparams(n_epochs=1), word_pairs(2, 0) + word_pairs(2, 1), model, WordTokenizer(),
                                      tmp_path / "out", progress=False)
    assert calls == [4]
    assert sorted(result[LAYER]) == [0, 1]


def test_trainer_writes_nothing(tmp_path, monkeypatch):
    """The trainer only trains: no file appears, even with loss_output_dir set, without the saver."""
    monkeypatch.chdir(tmp_path)
    model = build_tiny_model("llama")
    hp = make_hparams(n_epochs=1, loss_output_dir=str(tmp_path / "losses"))
    result = train_method("split", hp, word_pairs(), model, WordTokenizer(), split_loss, progress=False)
    assert sorted(result) == [LAYER]
    assert list(tmp_path.iterdir()) == []


def test_nan_loss_names_the_step_and_keeps_last_good_file(tmp_path):
    model = build_tiny_model("llama")
    hp = make_hparams(n_epochs=1)
    out = tmp_path / "spilt_vector"
    _train_saving(hp, word_pairs(), model, split_loss, out)
    saved = (out / f"layer_{LAYER}.pt").read_bytes()
    calls = []

    def poisoned(terms, hparams):
        calls.append(1)
        value = split_loss(terms, hparams)
        return value * float("nan") if len(calls) > 4 else value  # 2 chunks per batch: batch 2 fails

    with pytest.raises(TrainingError, match=r"batch 2 \(step 2\)") as error:
        _train_saving(dataclasses.replace(hp, seed=9), word_pairs(), model, poisoned, out)
    assert "optimizer step 2" in str(error.value)
    good = error.value.last_good_update
    assert torch.isfinite(good.bias).all()
    assert (out / f"layer_{LAYER}.pt").read_bytes() == saved
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_single_concept_is_saved_in_easyedit_layout(tmp_path):
    model = build_tiny_model("qwen2")
    out = tmp_path / "sentiment" / "spilt_lora"
    hp = make_hparams(intervention_method="lora", layers=[1, LAYER], n_epochs=1)
    result = _train_saving(hp, word_pairs(), model, split_loss, out)
    assert sorted(result) == [1, LAYER]
    payload = safe_torch_load(out / f"layer_{LAYER}.pt")
    assert set(payload) >= {"lora_A", "lora_B", "r", "alpha", "intervention_components", "concept_id"}
    assert torch.equal(payload["lora_B"], result[LAYER].lora_B.detach())
    import json

    meta = json.loads((out / "metadata.json").read_text())
    assert meta["layers"] == [1, LAYER] and meta["alg_name"] == "split"
    assert (meta["hidden_size"], meta["num_layers"], meta["intervention_method"]) == (32, model.config.num_hidden_layers, "lora")


def test_multi_concept_resumes_without_retraining_finished_concepts(tmp_path, monkeypatch):
    model = build_tiny_model("llama")
    pairs = word_pairs(4, 0) + word_pairs(4, 1) + word_pairs(4, 2)
    hp = make_hparams(n_epochs=1)
    out = tmp_path / "axbench" / "spilt_vector"
    trained: list[int] = []
    real_train_layer = training.train_layer

    def interrupted(*args, **kwargs):
        if kwargs["concept_id"] == 1:
            raise KeyboardInterrupt("simulated crash in concept 1")
        trained.append(kwargs["concept_id"])
        return real_train_layer(*args, **kwargs)

    monkeypatch.setattr(training, "train_layer", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _train_saving(hp, pairs, model, split_loss, out)
    assert trained == [0]
    first = safe_torch_load(out / f"layer_{LAYER}.pt")
    assert first.shape == (1, 32)

    def counting(*args, **kwargs):
        trained.append(kwargs["concept_id"])
        return real_train_layer(*args, **kwargs)

    monkeypatch.setattr(training, "train_layer", counting)
    result = _train_saving(hp, pairs, model, split_loss, out)
    assert trained == [0, 1, 2]  # concept 0 was not trained again
    stacked = safe_torch_load(out / f"layer_{LAYER}.pt")
    assert stacked.shape == (3, 32)
    assert torch.equal(stacked[0], first[0])
    assert sorted(result[LAYER]) == [0, 1, 2]
    for concept_id, update in result[LAYER].items():
        torch.testing.assert_close(update.bias.detach(), stacked[concept_id])
    import json

    state = json.loads((out / f"train_state_layer_{LAYER}.json").read_text())
    assert state["finished_concepts"] == [0, 1, 2]
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_prepare_pairs_masks_prompt_and_skips_the_bos_prefix():
    prepared = prepare_pairs(WordTokenizer(), word_pairs(2), make_hparams())
    assert prepared.prefix_length == 1  # BOS is not steered (exclude_bos)
    assert prepared.n_examples == 2
    labels = prepared.batch.labels
    assert (labels[0] != IGNORE_INDEX).sum() == 3 and (labels[1] != IGNORE_INDEX).sum() == 3
    assert prepare_pairs(WordTokenizer(), word_pairs(2), make_hparams(exclude_bos=False)).prefix_length == 0


def test_saver_writes_the_loss_log_of_each_concept(tmp_path):
    """Loss logs moved with the other files: `producing` writes one CSV row per batch, after training."""
    model = build_tiny_model("llama")
    hp = make_hparams(n_epochs=1, loss_output_dir=str(tmp_path / "losses"))
    _train_saving(hp, word_pairs(), model, split_loss, tmp_path / "spilt_vector")
    rows = (tmp_path / "losses" / f"train_losses_split_layer_{LAYER}_concept_0.csv").read_text().splitlines()
    assert rows[0] == "layer,concept_id,batch,loss"
    n_batches = -(-len(word_pairs()) // hp.batch_size)
    assert len(rows) == 1 + n_batches and all(row.startswith(f"{LAYER},0,") for row in rows[1:])


@pytest.mark.parametrize("rate", [0.2, 0.9])
def test_positions_dropout_drops_that_share_of_steered_positions_and_never_adds_one(rate):
    """`intervention_positions_dropout` is the probability that a steered position is dropped
    (EasyEdit's meaning): over ~2000 steered positions the kept share is 1 - rate within 0.05, and
    an unsteered position is never steered. Both completions of a packed row share the draw."""
    prepared = synthetic_pairs(n_examples=40, prompt=50, shared=5)
    prepared.prefix_length = 6
    examples = torch.arange(40)
    steering = prepared.packed_steering()[:, : int(prepared.layout.lengths.max())]
    kept = training._packed_positions(prepared, examples, rate, torch.Generator().manual_seed(1))
    assert not bool((kept * (1 - steering)).any())
    share = float(kept.sum() / steering.sum())
    assert abs(share - (1 - rate)) < 0.05, share


PAIRS = [
    PolarityPair("How was the film?", "Wonderful, I loved it.", "Awful, I hated it."),
    PolarityPair("And the food?", "Delicious and fresh!", "Cold and bland, sadly."),
    PolarityPair("Weather today?", "Sunny and bright.", "Grey, wet and gloomy."),
    PolarityPair("Your new job?", "Exciting and fun.", "Dull and tiring."),
    PolarityPair("The concert?", "Magical evening.", "Too loud, bad sound."),
]


def _hp(**values):
    return SFTHyperParams(layers=[1], n_epochs=1, batch_size=2, gradient_accumulation_steps=1, dropout=0.0, lr=0.05,
                          seed=3, **values)


def _train(model, tokenizer, pairs, hp):
    editor = SteerEditor(hp, model=model, tokenizer=tokenizer)
    return editor.train(pairs, save=False)[1].bias.detach().clone()


def test_max_num_of_examples_equals_training_on_the_first_n(tiny_chat_model, default_tokenizer):
    capped = _train(tiny_chat_model, default_tokenizer, PAIRS, _hp(max_num_of_examples=4))  # EasyEdit: 4 // 2
    first_two = _train(tiny_chat_model, default_tokenizer, PAIRS[:2], _hp())
    last_two = _train(tiny_chat_model, default_tokenizer, PAIRS[3:], _hp())
    everything = _train(tiny_chat_model, default_tokenizer, PAIRS, _hp())
    torch.testing.assert_close(capped, first_two, rtol=0, atol=0)
    assert not torch.allclose(capped, everything) and not torch.allclose(capped, last_two)


def test_output_length_that_cuts_a_completion_names_the_pair(default_tokenizer):
    hp = _hp()
    fmt = PromptFormat.from_hparams(hp)
    lengths = [encode_completion(default_tokenizer, fmt, p.question, p.matching) for p in PAIRS[:2]]
    # hand count: long enough for pair 0's whole prompt and completion, but pair 1's prompt alone fills it
    pairs = [PAIRS[0], PolarityPair("And the food? " * 6, "Delicious and fresh!", "Cold and bland, sadly.")]
    long_prompt = encode_completion(default_tokenizer, fmt, pairs[1].question, pairs[1].matching).prompt_length
    full0 = max(len(encode_completion(default_tokenizer, fmt, PAIRS[0].question, c).input_ids)
                for c in (PAIRS[0].matching, PAIRS[0].not_matching))
    limit = max(full0, long_prompt)
    assert limit >= full0 and long_prompt >= limit and lengths
    with pytest.raises(TrainingError, match=rf"pair 1 .*output_length={limit}"):
        prepare_pairs(default_tokenizer, pairs, _hp(output_length=limit))
    prepared = prepare_pairs(default_tokenizer, [PAIRS[0]], _hp(output_length=full0))  # exactly fits: no error
    assert prepared.batch.input_ids.shape[1] == full0
