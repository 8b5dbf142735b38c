"""The public API against independent expectations: `editor.steer` and per-layer apply multipliers
against the hand-written hook of tests/reference.py, `from_hparams(<yaml>)` against the YAML's
values, multi-concept CAA stacking against each concept's own mean difference computed by hand,
and `editor.evaluate` against hand NLL differences.
"""
from __future__ import annotations

import pytest
import torch
import yaml

from easyedit_split.apply import apply_from_hparams, per_layer_multipliers
from easyedit_split.data import PolarityPair
from easyedit_split.editor import SteerEditor
from easyedit_split.hparams import ApplyHyperParams, CAAHyperParams
from easyedit_split.interventions import DynamicWeightUpdate
from easyedit_split.prompts import PromptFormat, encode_completion
from easyedit_split.steering import SteeringInterventions
from reference import hand_logits


def _vec(seed, size):
    return torch.randn(size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def ids():
    return torch.randint(3, 90, (2, 6), generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("m", [3.0, -2.0])
def test_editor_steer_equals_hand_hook(tiny_chat_model, default_tokenizer, ids, m):
    editor = SteerEditor(CAAHyperParams(layers=[1]), model=tiny_chat_model, tokenizer=default_tokenizer)
    v = _vec(1, 32)
    editor.updates = {1: DynamicWeightUpdate.from_vector(v)}
    with torch.no_grad(), editor.steer(multiplier=m):
        got = tiny_chat_model(ids).logits
    torch.testing.assert_close(got, hand_logits(tiny_chat_model, ids, {1: m * v}), rtol=1e-5, atol=1e-5)
    assert (got - hand_logits(tiny_chat_model, ids, {1: -m * v})).abs().max() > 1e-2
    # restored afterwards: plain logits again
    with torch.no_grad():
        torch.testing.assert_close(tiny_chat_model(ids).logits, hand_logits(tiny_chat_model, ids, {}), rtol=0, atol=0)


def test_from_hparams_yaml_fields_equal_the_file(tmp_path, tiny_chat_model, default_tokenizer):
    values = {"alg_name": "caa", "layers": [1, 3], "seed": 7, "use_chat_template": False,
              "caa_token_set": "completion_and_suffix", "steer_positions": "after_prefix", "steer_vector_output_dir": "vecs"}
    path = tmp_path / "generate_caa.yaml"
    path.write_text(yaml.safe_dump(values))
    editor = SteerEditor.from_hparams(path, model=tiny_chat_model, tokenizer=default_tokenizer)
    assert isinstance(editor.hparams, CAAHyperParams)
    for key, value in values.items():
        assert getattr(editor.hparams, key) == value, key
    assert editor.prompt_format.use_chat_template is False


def test_per_layer_multipliers_pair_by_position():
    assert per_layer_multipliers([4, 9], [2.0, -3.0]) == {4: 2.0, 9: -3.0}
    assert per_layer_multipliers([4, 9], [1.5]) == {4: 1.5, 9: 1.5}


def test_apply_from_hparams_scales_each_layer_by_its_own_multiplier(tmp_path, tiny_chat_model, ids):
    v0, v2 = _vec(4, 32), _vec(5, 32)
    SteeringInterventions({0: DynamicWeightUpdate.from_vector(v0), 2: DynamicWeightUpdate.from_vector(v2)}).save(tmp_path / "vecs")
    apply = ApplyHyperParams(alg_name="caa", layers=[0, 2], multipliers=[2.0, -0.5], steer_vector_load_dir=str(tmp_path / "vecs"))
    handle = apply_from_hparams(tiny_chat_model, apply)
    try:
        with torch.no_grad():
            got = tiny_chat_model(ids).logits
    finally:
        handle.remove()
    torch.testing.assert_close(got, hand_logits(tiny_chat_model, ids, {0: 2.0 * v0, 2: -0.5 * v2}), rtol=1e-5, atol=1e-5)
    swapped = hand_logits(tiny_chat_model, ids, {0: -0.5 * v0, 2: 2.0 * v2})
    assert (got - swapped).abs().max() > 1e-2  # pairing by position matters


def _mean_completion_hidden(model, tokenizer, question, completion, layer, fmt):
    encoded = encode_completion(tokenizer, fmt, question, completion)
    with torch.no_grad():
        states = model(torch.tensor([encoded.input_ids]), output_hidden_states=True).hidden_states
    return states[layer + 1][0][encoded.prompt_length:].mean(0)


def test_multi_concept_caa_stacks_each_concepts_own_mean_difference(tmp_path, tiny_chat_model, default_tokenizer):
    pairs = [
        PolarityPair("How was the film?", "Wonderful, I loved it.", "Awful, I hated it.", concept_id=0),
        PolarityPair("And the food?", "Delicious and fresh!", "Cold and bland.", concept_id=0),
        PolarityPair("Tell me a fact.", "Cats purr.", "Dogs bark loudly.", concept_id=1),
        PolarityPair("Say something.", "The sky is blue.", "Grass is green today.", concept_id=1),
        PolarityPair("Anything else?", "Rivers flow.", "Stones sit still.", concept_id=1),
    ]
    hp = CAAHyperParams(layers=[1], caa_token_set="completion_and_suffix", steer_positions="easyedit")
    editor = SteerEditor(hp, model=tiny_chat_model, tokenizer=default_tokenizer)
    fmt = PromptFormat.from_hparams(hp)
    trained = editor.train(pairs, save=True, output_dir=tmp_path, dataset_name="two")
    files = list(tmp_path.rglob("layer_1.pt"))
    assert len(files) == 1
    stack = torch.load(files[0], weights_only=True)
    assert tuple(stack.shape) == (2, 32)
    for concept in (0, 1):
        own = [p for p in pairs if p.concept_id == concept]
        expected = torch.stack([
            _mean_completion_hidden(tiny_chat_model, default_tokenizer, p.question, p.matching, 1, fmt)
            - _mean_completion_hidden(tiny_chat_model, default_tokenizer, p.question, p.not_matching, 1, fmt)
            for p in own]).mean(0)
        torch.testing.assert_close(stack[concept].float(), expected, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(trained.for_concept(concept)[1].bias.detach(), expected, rtol=1e-4, atol=1e-5)


def _completion_nll(model, tokenizer, fmt, question, completion, adds):
    """Summed NLL of the completion tokens (everything after the prompt) under a plain forward."""
    encoded = encode_completion(tokenizer, fmt, question, completion)
    ids = torch.tensor([encoded.input_ids])
    logp = torch.log_softmax(hand_logits(model, ids, adds)[0].double(), -1)
    targets = ids[0, encoded.prompt_length:]
    return -logp[encoded.prompt_length - 1:-1].gather(1, targets[:, None]).sum().item()


def test_editor_evaluate_pref_odds_equal_hand_nll_differences(tiny_chat_model, default_tokenizer):
    pairs = [
        PolarityPair("How was the film?", "Wonderful, I loved it.", "Awful, I hated it."),
        PolarityPair("And the food?", "Delicious and fresh!", "Cold and bland, sadly."),
    ]
    hp = CAAHyperParams(layers=[1], steer_positions="easyedit")
    editor = SteerEditor(hp, model=tiny_chat_model, tokenizer=default_tokenizer)
    v = _vec(9, 32)
    editor.updates = {1: DynamicWeightUpdate.from_vector(v)}
    result = editor.evaluate(pairs, multipliers=[-2.0, 0.0, 2.0], manifold=False, n_bootstrap=20, progress=False)
    fmt = editor.prompt_format
    assert list(result.multipliers) == [-2.0, 0.0, 2.0]
    for row, m in enumerate((-2.0, 0.0, 2.0)):
        adds = {1: m * v} if m else {}
        expected = [_completion_nll(tiny_chat_model, default_tokenizer, fmt, p.question, p.not_matching, adds)
                    - _completion_nll(tiny_chat_model, default_tokenizer, fmt, p.question, p.matching, adds) for p in pairs]
        assert result.metrics.pref_odds[row] == pytest.approx(expected, rel=1e-4, abs=1e-4), m
    assert result.name == "caa"
