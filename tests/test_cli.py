"""The command line: argument parsing, one multiplier syntax, error reporting."""
from __future__ import annotations

import argparse

import pytest

from easyedit_split.cli import build_parser, main
from easyedit_split.cli.common import multipliers_arg
from easyedit_split.cli.evaluate import _evaluator_config


def test_multipliers_arg_reads_lists_and_ranges():
    assert multipliers_arg("-2,0,2") == [-2.0, 0.0, 2.0]
    assert multipliers_arg("-1:1:0.5") == [-1.0, -0.5, 0.0, 0.5, 1.0]


@pytest.mark.parametrize("text", ["0:1", "", "nan", "1,inf"])
def test_bad_multipliers_are_argparse_errors(text):
    with pytest.raises(argparse.ArgumentTypeError, match="multipliers"):
        multipliers_arg(text)


def test_both_commands_read_the_same_syntax():
    parser = build_parser()
    generate = parser.parse_args(["generate", "--vectors", "v", "--prompt", "p", "--multipliers=-4:4:4"])
    evaluate = parser.parse_args(["evaluate", "--dataset", "d", "--multipliers=-4:4:4"])
    assert generate.multipliers == [-4.0, 0.0, 4.0]
    assert _evaluator_config(evaluate).multipliers == (-4.0, 0.0, 4.0)
    listed = parser.parse_args(["evaluate", "--dataset", "d", "--multipliers", "4", "-4", "0,4"])
    assert _evaluator_config(listed).multipliers == (-4.0, 0.0, 4.0)


def test_evaluate_defaults_come_from_the_evaluator_config():
    args = build_parser().parse_args(["evaluate", "--dataset", "d"])
    config = _evaluator_config(args)
    assert config.multipliers is None  # each method's form sweep (evaluation/config.py)
    assert (config.nll_mode, config.n_bootstrap, config.batch_size, config.seed) == ("sequence", 1000, 64, 0)
    assert config.manifold is True and config.progress is True


def test_evaluate_flags_reach_the_config():
    args = build_parser().parse_args(["evaluate", "--dataset", "d", "--nll-mode", "token", "--bootstrap", "7",
                                      "--seed", "3", "--no-manifold", "--no-progress"])
    config = _evaluator_config(args)
    assert (config.nll_mode, config.n_bootstrap, config.seed) == ("token", 7, 3)
    assert config.manifold_options() is None and config.progress is False


@pytest.mark.parametrize("multipliers", ["--multipliers=nan", "--multipliers=,", "--nll-mode=tokens"])
def test_evaluate_rejects_bad_settings_before_loading_a_model(multipliers, capsys):
    assert main(["evaluate", "v", "--dataset", "d", multipliers]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and ("multipliers" in err or "nll_mode" in err)


def test_output_dir_is_kebab_case_and_out_stays_a_hidden_alias():
    parser = build_parser()
    for command in (["evaluate", "--dataset", "d"], ["demo"]):
        assert parser.parse_args([*command, "--output-dir", "r"]).output_dir == "r"
        assert parser.parse_args([*command, "--out", "r"]).output_dir == "r"
    assert parser.parse_args(["demo"]).output_dir == "outputs/demo"
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name in ("evaluate", "demo", "train"):
        text = subparsers.choices[name].format_help()
        assert "--output-dir" in text and "--out " not in text and "--out\n" not in text


def test_bad_hparams_file_exits_2_with_the_key(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("alg_name: caa\nlayers: [1]\nlayerz: [2]\n")
    assert main(["train", "--hparams", str(path)]) == 2
    err = capsys.readouterr().err
    assert "layerz" in err and "layers" in err and "bad.yaml" in err


def test_train_writes_under_the_current_directory_by_default(tmp_path, monkeypatch, tiny_chat_model, default_tokenizer):
    model_dir = tmp_path / "tiny"
    tiny_chat_model.save_pretrained(model_dir)
    default_tokenizer.save_pretrained(model_dir)
    work = tmp_path / "work"
    work.mkdir()
    hparams = work / "generate_caa.yaml"
    hparams.write_text("alg_name: caa\nlayers: [1]\nuse_chat_template: true\n", encoding="utf-8")
    monkeypatch.chdir(work)
    assert main(["train", "--hparams", str(hparams), "--model", str(model_dir)]) == 0
    assert (work / "sentiment" / "caa_vector" / "layer_1.pt").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny", "work"]  # nothing written beside the working dir
