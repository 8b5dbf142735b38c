"""EasyEdit parity options (docs/conventions.md, "Differences from EasyEdit"): CAA's `multiple_choice`
reading against EasyEdit's own generator on the snapshot, and the readings it needs by hand.

Independent expectations: EasyEdit 14cea82's `generate_caa_vectors` and its `LlamaWrapper`, run on a
patched temporary copy of the snapshot (tests/easyedit_host.py) with the tiny model saved to disk;
hidden states from Hugging Face's `output_hidden_states` at positions counted by hand.
"""
from __future__ import annotations

import dataclasses
import importlib
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from easyedit_split.data import PolarityPair
from easyedit_split.errors import HparamsError
from easyedit_split.hparams import CAAHyperParams
from easyedit_split.methods import caa
from easyedit_split.methods.caa import compute_caa_vectors, encode_multiple_choice_caa
from easyedit_split.prompts import PromptFormat

MC_PAIRS = [
    PolarityPair("Which is kinder?\n(A) Help\n(B) Harm", "(A)", "(B)"),
    PolarityPair("Pick one.\n(A) Lie\n(B) Tell the truth", "(B)", "(A)"),
    PolarityPair("Would you share?\n(A) Yes\n(B) No", "(A)", "(B)"),
]


def _hidden(model, ids, layer):
    with torch.no_grad():
        return model(torch.tensor([ids]), output_hidden_states=True).hidden_states[layer + 1][0]


def test_multiple_choice_reads_the_second_to_last_token_counted_by_hand(tiny_chat_model, default_tokenizer):
    """prompt + "\\nAnswer: (A)": SmolLM2 splits " (A)" into " (", "A", ")" (spelled out below), so the
    second-to-last token is the letter; each side is the layer output there, not a mean."""
    fmt = PromptFormat(completion_join="as_stored")
    encoded = encode_multiple_choice_caa(default_tokenizer, fmt, "Which?", "(A)")
    full = default_tokenizer(fmt.prompt_text(default_tokenizer, "Which?") + "\nAnswer: (A)",
                             add_special_tokens=False)["input_ids"]
    assert default_tokenizer.convert_ids_to_tokens(full[-3:]) == ["Ġ(", "A", ")"]
    assert encoded.input_ids == full[:-1] and encoded.completion_length == 1
    vectors = compute_caa_vectors(tiny_chat_model, default_tokenizer, MC_PAIRS, [0, 2], prompt_format=fmt,
                                  batch_size=2, progress=False, multiple_choice=True)
    for layer in (0, 2):
        diffs = []
        for pair in MC_PAIRS:
            prompt = fmt.prompt_text(default_tokenizer, pair.question)
            sides = [_hidden(tiny_chat_model, default_tokenizer(prompt + "\nAnswer: " + c, add_special_tokens=False)
                             ["input_ids"], layer)[-2] for c in (pair.matching, pair.not_matching)]
            diffs.append(sides[0] - sides[1])
        torch.testing.assert_close(vectors[layer], torch.stack(diffs).mean(0), rtol=1e-4, atol=1e-5)


def test_train_reads_multiple_choice_from_hparams(tiny_chat_model, default_tokenizer):
    """The key was accepted and ignored before: the vector must differ from the plain one."""
    plain = caa.train(SimpleNamespace(layers=[1]), MC_PAIRS, tiny_chat_model, default_tokenizer)
    chosen = caa.train(SimpleNamespace(layers=[1], multiple_choice=True), MC_PAIRS, tiny_chat_model, default_tokenizer)
    direct = compute_caa_vectors(tiny_chat_model, default_tokenizer, MC_PAIRS, [1],
                                 prompt_format=PromptFormat(completion_join="as_stored"), progress=False,
                                 multiple_choice=True)
    torch.testing.assert_close(chosen[1].bias.detach(), direct[1])
    assert ((chosen[1].bias - plain[1].bias).norm() / plain[1].bias.norm()).item() > 1e-2


def test_multiple_choice_needs_easyedits_token_set():
    with pytest.raises(HparamsError, match="key 'multiple_choice'.*caa_token_set: easyedit"):
        CAAHyperParams(layers=[0], multiple_choice=True, caa_token_set="completion_and_suffix")


def test_multiple_choice_with_the_capture_token_set_is_refused(tiny_chat_model, default_tokenizer):
    with pytest.raises(ValueError, match="^multiple_choice: true .* needs caa_token_set: easyedit"):
        compute_caa_vectors(tiny_chat_model, default_tokenizer, MC_PAIRS, [0], token_set="completion_and_suffix",
                            multiple_choice=True, progress=False)


# ------------------------------------------------------------------ EasyEdit's own CAA generator

@pytest.fixture(scope="module")
def easyedit_steer(tmp_path_factory):
    """EasyEdit's `steer` package from a patched temporary copy of the snapshot (0001 makes
    `steer.utils` importable, 0002 makes chat templates give ids under transformers 5)."""
    from easyedit_host import PATCHES, apply_patches, easyedit_cannot_run, forget_steer, snapshot_dir

    source = snapshot_dir()
    if source is None:
        pytest.skip("EasyEdit's snapshot is not on this machine (set EASYEDIT_SNAPSHOT)")
    if easyedit_cannot_run():
        pytest.skip(easyedit_cannot_run())
    root = tmp_path_factory.mktemp("easyedit") / "EasyEdit"
    shutil.copytree(source, root)
    apply_patches(root, [p for p in PATCHES if p.name[:4] in ("0001", "0002")])
    forget_steer()
    sys.path.insert(0, str(root))
    try:
        yield root
    finally:
        sys.path.remove(str(root))
        forget_steer()


@pytest.mark.slow
@pytest.mark.parametrize("multiple_choice", [True, False])
def test_caa_equals_easyedits_generator(easyedit_steer, tiny_chat_model, default_tokenizer, tmp_path,
                                        multiple_choice):
    """EasyEdit's `generate_caa_vectors` through its own `LlamaWrapper` (the tiny model saved under a
    name containing "llama"), with the chat template, against the package on the same rows."""
    model_dir = tmp_path / "tiny-llama"
    tiny_chat_model.save_pretrained(model_dir)
    default_tokenizer.save_pretrained(model_dir)
    generator = importlib.import_module("steer.vector_generators.caa.generate_caa_vectors")
    easyedit_hparams = importlib.import_module("steer.vector_generators.caa.generate_caa_hparam").CAAHyperParams(
        layers=[0, 2], multiple_choice=multiple_choice, save_vectors=False, device="cpu",
        use_chat_template=True, system_prompt="", model_name_or_path=str(model_dir))
    wrapper = importlib.import_module("steer.models.model_wrapper").LlamaWrapper(
        device="cpu", model_name_or_path=str(model_dir), hparams=easyedit_hparams)
    rows = [{"question": p.question, "matching": p.matching, "not_matching": p.not_matching} for p in MC_PAIRS]
    if not multiple_choice:
        rows = [dict(row, matching=" Yes", not_matching=" No") for row in rows]
    theirs = generator.generate_caa_vectors(easyedit_hparams, rows, model=wrapper)
    file_keys = CAAHyperParams(layers=[0, 2], multiple_choice=multiple_choice, use_chat_template=True)
    pairs = [PolarityPair(r["question"], r["matching"], r["not_matching"]) for r in rows]
    ours = caa.train(dataclasses.replace(file_keys), pairs, tiny_chat_model, default_tokenizer)
    for layer in (0, 2):
        torch.testing.assert_close(ours[layer].bias.detach(), theirs[f"layer_{layer}"].float(), rtol=1e-4, atol=1e-5)
