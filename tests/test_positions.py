"""Which positions each path steers under `steer_positions` (docs/conventions.md), against
hand-counted expectations: the SmolLM2 chat template's common prefix is 24 tokens (the default
system turn and "<|im_start|>user\\n"), counted below from the rendered text, not from the code
under test. A position "changes" when the input of the layer above the steered one differs
between multiplier 0 and a non-zero multiplier."""
from __future__ import annotations

import pytest
import torch

from easyedit_split.data import PolarityPair
from easyedit_split.evaluation.sweep_nll import score_pairs
from easyedit_split.generation import GenerationSettings, generate_steered
from easyedit_split.hparams import SplitHyperParams
from easyedit_split.interventions import DynamicWeightUpdate
from easyedit_split.prompts import PromptFormat, first_steered_position
from easyedit_split.prepared_pairs import prepare_pairs
from easyedit_split.training import StepPlan, _steered_nll

LAYER = 1
PREFIX = 24  # hand count: SmolLM2's default system turn + "<|im_start|>user\n"
QUESTIONS = ("How was the film?", "And the food on the long trip home yesterday?")


def _prefix_by_hand(tokenizer) -> int:
    rendered = PromptFormat().prompt_text(tokenizer, QUESTIONS[0])
    return len(tokenizer(rendered[: rendered.index(QUESTIONS[0])], add_special_tokens=False)["input_ids"])


def _update(form: str, model) -> DynamicWeightUpdate:
    gen = torch.Generator().manual_seed(0)
    hidden = model.config.hidden_size
    if form == "vector":
        return DynamicWeightUpdate.from_vector(torch.randn(hidden, generator=gen))
    inner = model.config.intermediate_size
    if form == "lora":
        return DynamicWeightUpdate.from_lora(torch.randn(inner, 2, generator=gen), torch.randn(2, hidden, generator=gen))
    return DynamicWeightUpdate.from_local_weight(torch.randn(inner, hidden, generator=gen) * 0.1,
                                                 torch.randn(hidden, generator=gen))


class _LayerInputs:
    """Records the hidden states entering the layer above the steered one (the steered layer's output)."""

    def __init__(self, model):
        self.calls: list[torch.Tensor] = []
        layer = model.model.layers[LAYER + 1]
        self.handle = layer.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        self.calls.append(hidden.detach().clone())

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def _changed(a: torch.Tensor, b: torch.Tensor) -> list[int]:
    return ((a - b).abs().amax(dim=-1) > 1e-6).nonzero().flatten().tolist()


# (rule, form) -> expected first steered position, written by hand from the table in docs/conventions.md
TRAINING = {("easyedit", "vector"): PREFIX, ("easyedit", "lora"): 0, ("easyedit", "local_weight"): 0,
            ("after_prefix", "vector"): PREFIX, ("after_prefix", "lora"): PREFIX,
            ("after_prefix", "local_weight"): PREFIX, ("all", "vector"): 0, ("all", "lora"): 0}
GENERATION = {"easyedit": 0, "after_prefix": PREFIX, "all": 0}


def test_hand_counted_prefix(default_tokenizer):
    assert _prefix_by_hand(default_tokenizer) == PREFIX


@pytest.mark.parametrize("rule, form", sorted(TRAINING))
def test_training_steers_the_positions_the_rule_names(tiny_chat_model, default_tokenizer, rule, form):
    hparams = SplitHyperParams(layers=[LAYER], intervention_method=form, use_chat_template=True, steer_positions=rule,
                               completion_join="strip_leading_space", low_rank_dimension=2)
    pairs = [PolarityPair(QUESTIONS[0], "Wonderful.", "Awful, I hated it.")]
    prepared = prepare_pairs(default_tokenizer, pairs, hparams)
    update = _update(form, tiny_chat_model)
    rows = torch.tensor([0, 1])
    outputs = []
    for m in (0.0, 3.0):
        with _LayerInputs(tiny_chat_model) as record:
            plan = StepPlan(rows[:1], rows[1:], torch.tensor([m]), torch.tensor([False]), 1)  # sequence 0 wins over 1
            _steered_nll(tiny_chat_model, prepared, LAYER, update, plan, 0.0, None, fast=False)
        outputs.append(record.calls[-1])
    length = int(prepared.lengths[0])
    first = TRAINING[(rule, form)]
    assert _changed(outputs[0][0, :length], outputs[1][0, :length]) == list(range(first, length))


@pytest.mark.parametrize("rule, form", sorted(TRAINING))
def test_scoring_steers_the_positions_the_rule_names(tiny_chat_model, default_tokenizer, rule, form):
    """Scoring follows the training rule (EasyEdit scores through its trainer)."""
    fmt = PromptFormat(steer_positions=rule)
    pairs = [PolarityPair(QUESTIONS[0], "Wonderful.", "Awful, I hated it.")]
    update = _update(form, tiny_chat_model)
    with _LayerInputs(tiny_chat_model) as record:
        score_pairs(tiny_chat_model, default_tokenizer, pairs, {LAYER: update}, [0.0, 3.0], fmt=fmt, layout="rows",
                    batch_size=64)
    replayed = [h for h in record.calls if h.shape[0] == 4][-1]  # rows: (m=0: both completions), (m=3: both)
    prompt = len(default_tokenizer(fmt.prompt_text(default_tokenizer, QUESTIONS[0]), add_special_tokens=False)["input_ids"])
    completion = len(default_tokenizer("Awful, I hated it.<|im_end|>\n", add_special_tokens=False)["input_ids"])
    end = prompt + completion  # the longer row (not matching) ends the replay
    offset = end - replayed.shape[1]  # positions before it come from the unsteered prefix cache
    changed = [offset + p for p in _changed(replayed[1], replayed[3])]
    first = TRAINING[(rule, form)]
    assert changed == list(range(first, end))


@pytest.mark.parametrize("rule", sorted(GENERATION))
@pytest.mark.parametrize("form", ["vector", "lora"])
def test_generation_steers_the_positions_the_rule_names(tiny_chat_model, default_tokenizer, rule, form):
    fmt = PromptFormat(steer_positions=rule)
    lengths = [len(default_tokenizer(fmt.prompt_text(default_tokenizer, q), add_special_tokens=False)["input_ids"])
               for q in QUESTIONS]
    width = max(lengths)
    outputs = []
    for m in (0.0, 3.0):
        with _LayerInputs(tiny_chat_model) as record:
            generate_steered(tiny_chat_model, default_tokenizer, list(QUESTIONS), {LAYER: _update(form, tiny_chat_model)},
                             [m], GenerationSettings(max_new_tokens=1), fmt)
        outputs.append(record.calls[0])  # the prompt pass (left padded)
    for row, length in enumerate(lengths):
        pad = width - length
        first = pad + GENERATION[rule]
        assert _changed(outputs[0][row], outputs[1][row]) == list(range(first, width)), (rule, row)


def test_unknown_rule_is_an_error_naming_the_key(default_tokenizer):
    with pytest.raises(ValueError, match="steer_positions"):
        PromptFormat(steer_positions="prefix")
    with pytest.raises(ValueError, match="path"):
        first_steered_position(default_tokenizer, PromptFormat(), "vector", "apply")
