"""The README's main job on the real default model: steering visibly changes the text."""
from __future__ import annotations

import pytest

from easyedit_split.demo import run_steering_demo
from easyedit_split.editor import SteerEditor
from easyedit_split.hparams import CAAHyperParams

pytestmark = pytest.mark.default_model


@pytest.fixture(scope="module")
def default_editor(default_model_and_tokenizer):
    model, tokenizer = default_model_and_tokenizer
    return SteerEditor(CAAHyperParams(layers=[15], use_chat_template=True), model=model, tokenizer=tokenizer)


def test_demo_steered_text_differs_from_unsteered(default_editor):
    result = run_steering_demo(editor=default_editor, max_pairs=32, max_new_tokens=16)
    assert result.multipliers == [-2.0, 0.0, 2.0]
    for index in range(len(result.prompts)):
        unsteered = result.texts[0.0][index]
        assert unsteered and result.texts[2.0][index] != unsteered and result.texts[-2.0][index] != unsteered
    assert result.vector_norm > 0
    # the README's claim: the sentiment vector moves the text with the sign of m (a model-free lexicon count)
    from test_cli import lexicon_score

    assert sum(map(lexicon_score, result.texts[2.0])) > sum(map(lexicon_score, result.texts[-2.0])), result.texts
