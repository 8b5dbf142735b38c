"""SteerEditor: train/save/load round trip, batched padding-aware generation, clear errors."""
from __future__ import annotations

import pytest
import torch

from easyedit_split.data import GenerationExample, PolarityPair
from easyedit_split.editor import SteerEditor
from easyedit_split.errors import HparamsError
from easyedit_split.hparams import CAAHyperParams
from easyedit_split.integrations.pipeline import generate_results
from easyedit_split.interventions import DynamicWeightUpdate, steer
from easyedit_split.prompts import steering_prefix_length
from easyedit_split.steering import SteeringInterventions

PAIRS = [
    PolarityPair("How was the film?", "Wonderful, I loved it.", "Awful, I hated it."),
    PolarityPair("And the food?", "Delicious and fresh!", "Cold and bland, sadly."),
]


@pytest.fixture
def editor(tiny_chat_model, default_tokenizer, tmp_path):
    hparams = CAAHyperParams(layers=[1, 2], steer_vector_output_dir=str(tmp_path), save_vectors=True)
    return SteerEditor(hparams, model=tiny_chat_model, tokenizer=default_tokenizer)


def _plain_generate(model, tokenizer, editor, prompt, max_new_tokens):
    ids = tokenizer(editor.prompt_format.prompt_text(tokenizer, prompt), return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True).strip()


def test_train_saves_in_easyedit_layout_and_loads_back(editor, tmp_path):
    updates = editor.train(PAIRS, dataset_name="toy")
    directory = tmp_path / "toy" / "caa_vector"
    assert sorted(p.name for p in directory.glob("layer_*.pt")) == ["layer_1.pt", "layer_2.pt"]
    loaded = editor.load(directory)
    for layer in (1, 2):
        assert torch.equal(loaded[layer].bias, updates[layer].bias.detach())


def test_generation_at_zero_equals_plain_model_and_batching_is_padding_aware(editor, tiny_chat_model, default_tokenizer):
    editor.train(PAIRS, save=False)
    with torch.no_grad():
        for update in editor.updates.values():
            update.bias.mul_(50.0)  # strong enough to change greedy tokens of a random model
    prompts = ["Hi", "Tell me about your favourite holiday in the mountains, please."]
    texts = editor.generate(prompts, multipliers=[0.0, 1.0], max_new_tokens=6)
    assert set(texts) == {0.0, 1.0} and all(len(v) == 2 for v in texts.values())
    for prompt, text in zip(prompts, texts[0.0]):
        assert text == _plain_generate(tiny_chat_model, default_tokenizer, editor, prompt, 6)
    alone = editor.generate([prompts[0]], multipliers=[1.0], max_new_tokens=6)[1.0][0]
    assert texts[1.0][0] == alone  # the long prompt in the batch (padding) changes nothing
    assert texts[1.0] != texts[0.0]
    assert default_tokenizer.padding_side == "right"  # restored


def test_layer_out_of_range_is_an_error(tiny_chat_model, default_tokenizer):
    with pytest.raises(HparamsError, match="layers"):
        SteerEditor(CAAHyperParams(layers=[40]), model=tiny_chat_model, tokenizer=default_tokenizer)


def test_generate_without_interventions_says_what_to_do(editor):
    with pytest.raises(HparamsError, match="train"):
        editor.generate(["Hi"])


def test_pipeline_generation_steers_like_the_editor(editor, tiny_chat_model, default_tokenizer):
    """EasyEdit-style generation (integrations.pipeline) steers the same positions as SteerEditor.generate:
    the prompt pass leaves the chat template's common prefix untouched and changes everything after it."""
    editor.train(PAIRS, save=False)
    steered_layer = {2: editor.updates[2]}
    prompts = ["Hi", "Tell me about your favourite holiday in the mountains, please."]
    seen = {}
    layers = tiny_chat_model.model.layers

    def keep_unsteered(module, args, output):  # registered before the intervention's hook: sees layer 2 unsteered
        seen.setdefault("unsteered", output[0] if isinstance(output, tuple) else output)

    def keep_steered(module, args):  # layer 3's input: layer 2's steered output
        seen.setdefault("steered", args[0])

    before = layers[2].register_forward_hook(keep_unsteered)
    after = layers[3].register_forward_pre_hook(keep_steered)
    try:
        generate_results(tiny_chat_model, default_tokenizer, editor.prompt_format, [GenerationExample(p) for p in prompts],
                         [steered_layer], {"max_new_tokens": 2, "do_sample": False})
    finally:
        before.remove(), after.remove()
    changed = (seen["steered"] - seen["unsteered"]).abs().amax(-1) > 0  # [batch, seq] of the prompt pass
    prefix = steering_prefix_length(default_tokenizer, editor.prompt_format)
    for row, prompt in enumerate(prompts):
        length = len(default_tokenizer(editor.prompt_format.prompt_text(default_tokenizer, prompt), add_special_tokens=False)["input_ids"])
        first = changed.shape[1] - length  # left padding
        assert not changed[row, : first + prefix].any()
        assert changed[row, first + prefix :].all()
    texts = editor.generate(prompts, multipliers=[1.0], max_new_tokens=4, updates=steered_layer)[1.0]
    records = generate_results(tiny_chat_model, default_tokenizer, editor.prompt_format, [GenerationExample(p) for p in prompts],
                               [steered_layer], {"max_new_tokens": 4, "do_sample": False})
    assert [r["pred"][0].strip() for r in records] == texts


def test_generation_needs_no_hparams_and_steer_takes_interventions_first(tiny_chat_model, default_tokenizer, tmp_path):
    """Load saved vectors and generate without any hparams; `editor.steer(updates, m)` is `steer(model, updates, m)`."""
    vector = 3.0 * torch.randn(tiny_chat_model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    SteeringInterventions({1: DynamicWeightUpdate.from_vector(vector)}).save(tmp_path)
    editor = SteerEditor(model=tiny_chat_model, tokenizer=default_tokenizer)
    loaded = editor.load(tmp_path)
    assert isinstance(loaded, SteeringInterventions) and torch.equal(loaded[1].bias.detach(), vector)
    assert set(editor.generate(["Hi"], multipliers=[0.0, 1.0], max_new_tokens=2)) == {0.0, 1.0}
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        with editor.steer(loaded, 2.0):
            through_editor = tiny_chat_model(ids).logits
        with steer(tiny_chat_model, loaded, 2.0):
            direct = tiny_chat_model(ids).logits
    assert torch.equal(through_editor, direct)


def test_steer_with_a_number_first_says_the_argument_order(editor):
    editor.train(PAIRS, save=False)
    with pytest.raises(TypeError, match="multiplier=4.0"):
        with editor.steer(4.0):
            pass


def test_evaluate_with_generate_and_default_multipliers_uses_the_form_sweep_for_both_halves(editor):
    # multipliers=None used to reach list(None) in the generation half (TypeError)
    from easyedit_split.evaluation.config import form_sweep
    from easyedit_split.generation import GenerationSettings

    editor.train(PAIRS, save=False)
    result = editor.evaluate(PAIRS, manifold=False, n_bootstrap=5, progress=False, generate=True,
                             generation_options=dict(progress=False, perplexity=False,
                                                     settings=GenerationSettings(max_new_tokens=1)))
    sweep = list(form_sweep("vector"))
    assert list(result.preference.metrics.multipliers) == sweep
    assert list(result.generation.multipliers) == sweep
