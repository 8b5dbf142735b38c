"""The join rule and the positions rule: one explicit option each, EasyEdit's by default for
EasyEdit files, the package's for its own data, recorded where results are written."""
from __future__ import annotations

from pathlib import Path

import pytest

from easyedit_split.hparams import load_hparams
from easyedit_split.prompts import (
    EASYEDIT_CONVENTIONS, PACKAGE_CONVENTIONS, PromptFormat, conventions_for, encode_completion,
)

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"


def test_join_rules_by_hand(default_tokenizer):
    stored, stripped = PromptFormat(completion_join="as_stored"), PromptFormat(completion_join="strip_leading_space")
    assert stored.join(default_tokenizer, " Yes") == " Yes" and stripped.join(default_tokenizer, " Yes") == "Yes"
    plain_stored = PromptFormat(use_chat_template=False, completion_join="as_stored")
    plain_stripped = PromptFormat(use_chat_template=False, completion_join="strip_leading_space")
    assert plain_stored.join(default_tokenizer, " Yes") == " Yes" and plain_stripped.join(default_tokenizer, "Yes") == " Yes"
    # the first completion token: "ĠYes" (leading space kept) vs "Yes"
    for fmt, token in ((stored, "ĠYes"), (stripped, "Yes")):
        encoded = encode_completion(default_tokenizer, fmt, "Would you lie?", " Yes")
        assert default_tokenizer.convert_ids_to_tokens(encoded.input_ids[encoded.prompt_length]) == token


def test_easyedit_files_get_easyedits_rules_and_the_packages_files_the_packages():
    easyedit_file = load_hparams(FIXTURES / "easyedit_hparams" / "psychopathy_gemma_generate_spilt_vector.yaml")
    assert PromptFormat.from_hparams(easyedit_file).conventions() == EASYEDIT_CONVENTIONS
    assert easyedit_file.steer_positions == "easyedit" and easyedit_file.completion_join == "as_stored"
    for path in [*sorted((ROOT / "hparams" / "sentiment").rglob("*.yaml")),
                 *sorted((ROOT / "easyedit_split" / "configs" / "demo").glob("*.yaml"))]:
        assert PromptFormat.from_hparams(load_hparams(path)).conventions() == PACKAGE_CONVENTIONS, path
    caa = load_hparams(ROOT / "hparams" / "psychopathy" / "smollm2-135m-instruct" / "caa" / "generate_caa.yaml")
    assert caa.caa_token_set == "easyedit"


def test_evaluate_defaults_follow_the_dataset():
    assert conventions_for("sentiment") == PACKAGE_CONVENTIONS
    assert conventions_for(str(FIXTURES / "data" / "psychopathy_sample.jsonl")) == EASYEDIT_CONVENTIONS
    assert conventions_for("sentiment", steer_positions="all")["steer_positions"] == "all"


def test_bad_values_are_errors_naming_the_key():
    from easyedit_split.errors import HparamsError
    from easyedit_split.hparams import SplitHyperParams

    with pytest.raises(HparamsError, match="completion_join"):
        SplitHyperParams(layers=[0], completion_join="strip")
    with pytest.raises(HparamsError, match="steer_positions"):
        SplitHyperParams(layers=[0], steer_positions="prefix")
    with pytest.raises(ValueError, match="completion_join"):
        PromptFormat(completion_join="strip")


def test_cli_flags_reach_the_options():
    from easyedit_split.cli import build_parser

    args = build_parser().parse_args(["train", "--hparams", "x.yaml", "--steer-positions", "all",
                                      "--completion-join", "as_stored"])
    assert (args.steer_positions, args.completion_join) == ("all", "as_stored")
    args = build_parser().parse_args(["evaluate", "d", "--dataset", "sentiment", "--steer-positions", "easyedit"])
    assert args.steer_positions == "easyedit" and args.completion_join is None


def test_scored_context_records_the_rules(default_tokenizer):
    import torch

    from easyedit_split.evaluation import PreferenceUtilityEvaluator

    fmt = PromptFormat(**EASYEDIT_CONVENTIONS)
    context = PreferenceUtilityEvaluator(torch.nn.Linear(1, 1), default_tokenizer, prompt_format=fmt,
                                         manifold=False).scored_context([])
    assert context["steer_positions"] == "easyedit" and context["completion_join"] == "as_stored"
    assert context["join_rule"].startswith("as_stored")
