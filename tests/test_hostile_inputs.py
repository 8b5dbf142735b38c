"""Inputs a user can get wrong or craft: every file of the generated hostile corpus
(tests/hostile_corpus.py) is rejected by the CLI (non-zero exit, no traceback, the file or directory
named, nothing written, no code run); escaping names, unwritable outputs, concept ids, non-finite
numbers, empty multiplier lists, over-long prompts and Ctrl-C each fail early, naming the file, row or key.

The whole corpus goes through `cli.main` in this process (hundreds of cases, seconds); a sample of
each kind also goes through a real `python -m easyedit_split.cli` subprocess.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import build_tiny_model
from easyedit_split import cli
from easyedit_split.cli import demo as cli_demo
from easyedit_split.data import load_dataset, load_generation_file
from easyedit_split.errors import DatasetError, HparamsError, StorageError
from easyedit_split.hparams import load_hparams
from easyedit_split.interventions import DynamicWeightUpdate, steer
from easyedit_split.producing import train_to_dir
from easyedit_split.prompts import PromptFormat, check_prompt_length, encode_completion
from easyedit_split.steering import SteeringInterventions
from easyedit_split.easyedit_layout import intervention_dir
from easyedit_split.storage.files import check_writable
from hostile_corpus import Case, build_corpus


REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, default_tokenizer):
    """A tiny random Llama with the default tokenizer, saved as a model directory the CLI can load."""
    model = build_tiny_model("llama", vocab_size=len(default_tokenizer))
    directory = tmp_path_factory.mktemp("tiny_model")
    model.save_pretrained(directory)
    default_tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("hostile")
    return root, build_corpus(root, hidden=32, n_layers=4, inner=48, model_dir=tiny_model_dir)


def _argv(case: Case, root: Path, model_dir: Path) -> list[str]:
    common = ["--model", str(model_dir)]
    if case.command == "generate":
        return ["generate", *case.args, "--prompt", "Hi", "--max-new-tokens", "2", *common]
    if case.command == "evaluate":
        return ["evaluate", *case.args, "--dataset", str(root / "good_data.jsonl"), "--output-dir", str(root / "report"), "--no-plots", "--no-manifold",
                "--no-progress", "--bootstrap", "10", *common]
    return ["train", *case.args, *common]


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def test_corpus_is_generated_and_large(corpus):
    root, cases = corpus
    kinds = {case.name.split(":")[0] for case in cases}
    assert {"generate", "evaluate", "train", "train-hparams", "evaluate-hparams", "generate-multipliers"} <= kinds
    assert len(cases) > 150


@pytest.mark.slow
def test_every_hostile_input_is_rejected_in_process(corpus, tiny_model_dir, capsys):
    root, cases = corpus
    failures = []
    for case in cases:
        before = _tree(root)
        try:
            code = cli.main(_argv(case, root, tiny_model_dir))
        except SystemExit as exit:  # argparse's own errors
            code = exit.code
        except BaseException as error:  # a traceback at the CLI
            failures.append(f"{case.name}: raised {type(error).__name__}: {error}")
            continue
        err = capsys.readouterr().err
        after = _tree(root)
        if code in (0, None):
            failures.append(f"{case.name}: exit {code}")
        elif "Traceback" in err:
            failures.append(f"{case.name}: traceback")
        elif case.names not in err:
            failures.append(f"{case.name}: message does not name {case.names}: {err.strip()[:300]}")
        elif after != before:
            changed = sorted(set(after.items()) ^ set(before.items()))[:3]
            failures.append(f"{case.name}: left files behind or changed: {changed}")
    assert not failures, "\n".join(failures)
    assert not (root / "PWNED").exists(), "a pickle's code ran"


SAMPLE = ("generate:torch_pickle_code", "evaluate:stacked-posinf", "train:escaping_name", "generate-multipliers:empty",
          "train-hparams:alias_bomb")
# (each real process costs seconds of imports; the kill-while-saving test runs `generate` on a half-written directory)


@pytest.mark.parametrize("name", SAMPLE)
@pytest.mark.slow
def test_sample_is_rejected_by_a_real_cli_process(corpus, tiny_model_dir, name):
    root, cases = corpus
    case = next(c for c in cases if c.name == name)
    before = _tree(root)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "easyedit_split.cli", *_argv(case, root, tiny_model_dir)],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode in (1, 2), result.stderr
    assert "Traceback" not in result.stderr
    assert case.names in result.stderr
    lines = result.stderr.strip().splitlines()
    assert "error:" in lines[-1] and case.names in lines[-1], result.stderr  # one line (argparse prints usage above it)
    assert _tree(root) == before
    assert not (root / "PWNED").exists()


# ----------------------------------------------------------------------------- paths


@pytest.mark.parametrize("name", ["../../x", "..", "a/../../b", "/etc"])
def test_dataset_names_cannot_escape_the_output_root(tmp_path, name):
    with pytest.raises(StorageError, match="outside the output directory|not usable"):
        intervention_dir(tmp_path / "out", name, "caa")


def test_nested_dataset_names_inside_the_root_are_fine(tmp_path):
    assert intervention_dir(tmp_path, "a/b/..", "caa") == tmp_path / "a/b/.." / "caa_vector"


def test_train_with_escaping_dataset_name_writes_nothing(tmp_path):
    hparams = load_hparams({"alg_name": "caa", "layers": [1]})
    out = tmp_path / "root" / "out"
    out.mkdir(parents=True)
    with pytest.raises(StorageError, match=r"outside the output directory"):
        train_to_dir(hparams, [], None, None, out, "../../x")  # fails before the method runs (no model needed)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["out", "root"]


def test_dataset_given_as_dir_with_dotdot_is_refused_by_the_cli(tmp_path, capsys):
    data = tmp_path / "some" / "dir"
    (data / "sub").mkdir(parents=True)
    (data / "train.jsonl").write_text(json.dumps({"question": "q", "matching": "a", "not_matching": "b"}) + "\n")
    hparams = tmp_path / "caa.yaml"
    hparams.write_text("alg_name: caa\nlayers: [1]\n")
    # the model is not even looked at: the name is checked first
    code = cli.main(["train", "--hparams", str(hparams), "--dataset", f"{data}/sub/..", "--output-dir",
                     str(tmp_path / "out"), "--model", str(tmp_path / "no_model")])
    assert code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "'..'" in err and "outside the output directory" in err and "no_model" not in err
    assert not (tmp_path / "caa_vector").exists()


def test_output_under_a_regular_file_fails_before_the_model_loads(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    hparams = tmp_path / "caa.yaml"
    hparams.write_text("alg_name: caa\nlayers: [1]\n")
    code = cli.main(["train", "--hparams", str(hparams), "--output-dir", str(blocker / "out"),
                     "--model", str(tmp_path / "no_such_model")])
    err = capsys.readouterr().err
    assert code == 2 and f"{blocker} is a file" in err and "no_such_model" not in err
    vectors = tmp_path / "vectors"
    SteeringInterventions({1: DynamicWeightUpdate.from_vector(torch.ones(32))}).save(vectors)
    code = cli.main(["evaluate", str(vectors), "--dataset", "sentiment", "--output-dir", str(blocker / "report"),
                     "--model", str(tmp_path / "no_such_model")])
    err = capsys.readouterr().err
    assert code == 2 and f"{blocker} is a file" in err and "no_such_model" not in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_directory_is_refused(tmp_path):
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        with pytest.raises(StorageError, match="not writable"):
            check_writable(locked / "out")
    finally:
        locked.chmod(0o755)


def test_unwritable_check_names_the_path(tmp_path):
    (tmp_path / "f").write_text("")
    with pytest.raises(StorageError, match=r"f/a/b: cannot be the output directory: .*f is a file"):
        check_writable(tmp_path / "f" / "a" / "b")
    assert check_writable(tmp_path / "new" / "deep") == tmp_path / "new" / "deep"
    assert not (tmp_path / "new").exists()  # checking creates nothing


# ----------------------------------------------------------------------------- concept ids


def _steer_eval(path: Path, ids: list[int]) -> Path:
    path.write_text("".join(json.dumps({"question": f"q{i}", "pos_answer": "a", "neg_answer": "b", "concept_id": c}) + "\n"
                            for i, c in enumerate(ids)))
    return path


def test_negative_concept_id_names_the_row(tmp_path):
    path = _steer_eval(tmp_path / "d.jsonl", [0, 1, -1])
    with pytest.raises(DatasetError, match=r"d\.jsonl, line 3: concept_id -1 is negative"):
        load_dataset(path)


def test_concept_id_far_beyond_the_concepts_present_names_the_row(tmp_path):
    path = _steer_eval(tmp_path / "d.jsonl", [0, 0, 100_000, 0])
    with pytest.raises(DatasetError, match=r"line 3: concept_id 100000 is far beyond the 2 concepts"):
        load_dataset(path)
    path = _steer_eval(tmp_path / "g.jsonl", [10 ** 15])
    with pytest.raises(DatasetError, match="line 1"):
        load_dataset(path)


def test_sparse_but_plausible_concept_ids_still_load(tmp_path):
    path = _steer_eval(tmp_path / "d.jsonl", [0, 499, 15_999])  # an AxBench subset keeps its ids
    assert sorted({p.concept_id for p in load_dataset(path)}) == [0, 499, 15_999]


def test_generation_files_check_concept_ids_too(tmp_path):
    path = tmp_path / "gen.jsonl"
    path.write_text(json.dumps({"input": "hi", "output_concept": "c", "concept_id": -5}) + "\n")
    with pytest.raises(DatasetError, match="line 1: concept_id -5"):
        load_generation_file(path)


# ----------------------------------------------------------------------------- non-finite numbers


@pytest.mark.parametrize("value", [float("nan"), float("inf"), [1.0, float("nan")]])
def test_api_multipliers_must_be_finite(value):
    model = build_tiny_model("llama")
    update = {1: DynamicWeightUpdate.from_vector(torch.ones(32))}
    with pytest.raises(ValueError, match="finite"):
        with steer(model, update, torch.tensor(value)):
            pass
    with pytest.raises(ValueError, match="finite"):
        SteeringInterventions(update).apply(model, torch.tensor(value))


@pytest.mark.parametrize("text, key", [
    ("alg_name: caa\nlayers: [1]\nmultipliers: [.nan]\n", "multipliers"),
    ("alg_name: caa\nlayers: [1]\nmultipliers: [1.0, -.inf]\n", "multipliers"),
])
def test_yaml_multipliers_must_be_finite(tmp_path, text, key):
    path = tmp_path / "apply.yaml"
    path.write_text(text)
    with pytest.raises(HparamsError, match=rf"{path}: key '{key}': .* is not a finite number"):
        load_hparams(path, kind="apply")


@pytest.mark.parametrize("text, key", [
    ("alg_name: sft\nlayers: [1]\nsteering_factors: [2.0, .nan]\n", "steering_factors"),
    ("alg_name: spilt\nlayers: [1]\nsteering_factors: [.inf]\n", "steering_factors"),
    ("alg_name: sft\nlayers: [1]\nlr: .nan\n", "lr"),
])
def test_yaml_steering_factors_and_rates_must_be_finite(tmp_path, text, key):
    path = tmp_path / "generate.yaml"
    path.write_text(text)
    with pytest.raises(HparamsError, match=rf"{path}.*key '{key}'.*not a finite number"):
        load_hparams(path, kind="train")


def test_api_hparams_refuse_nan_steering_factors():
    with pytest.raises(HparamsError, match="steering_factors"):
        load_hparams({"alg_name": "sft", "layers": [1], "steering_factors": [float("nan")]})


# ----------------------------------------------------------------------------- the CLI's contract


@pytest.mark.parametrize("argv", [
    ["generate", "--vectors", "v", "--prompt", "p", "--multipliers="],
    ["generate", "--vectors", "v", "--prompt", "p", "--multipliers=nan"],
    ["evaluate", "v", "--dataset", "sentiment", "--multipliers="],
    ["evaluate", "v", "--dataset", "sentiment", "--multipliers=inf"],
    ["demo", "--quick", "--multipliers="],
    ["demo", "--sweep=", "--no-manifold"],
])
def test_every_command_refuses_empty_or_non_finite_multipliers(argv, capsys):
    with pytest.raises(SystemExit) as info:
        code = cli.main(argv)
        raise SystemExit(code)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "multipliers" in err and "Traceback" not in err


def test_ctrl_c_exits_130_with_one_line(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_demo, "run_cache_model", interrupted)
    assert cli.main(["cache-model"]) == 130
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "interrupted" in err


def test_unexpected_errors_are_one_line_exit_1(monkeypatch, capsys):
    def broken(args):
        raise RuntimeError("something deep failed\nwith a second line")

    monkeypatch.setattr(cli_demo, "run_cache_model", broken)
    assert cli.main(["cache-model"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == "error: RuntimeError: something deep failed"


def test_layer_out_of_range_in_a_yaml_file_names_the_file(tmp_path, capsys, default_tokenizer):
    model_dir = tmp_path / "tiny"
    build_tiny_model("llama", vocab_size=len(default_tokenizer)).save_pretrained(model_dir)
    default_tokenizer.save_pretrained(model_dir)
    hparams = tmp_path / "generate_caa.yaml"
    hparams.write_text("alg_name: caa\nlayers: [7]\n")
    code = cli.main(["train", "--hparams", str(hparams), "--model", str(model_dir), "--output-dir", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and str(hparams) in err and "7" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------- context length


def test_prompt_longer_than_the_context_is_a_clear_error(default_tokenizer):
    model = build_tiny_model("llama", vocab_size=len(default_tokenizer))  # max_position_embeddings 128
    fmt = PromptFormat(use_chat_template=True)
    assert check_prompt_length(default_tokenizer, fmt, "How was your weekend?", model) < 128
    with pytest.raises(DatasetError, match=r"exceed the model's context of 128 tokens"):
        check_prompt_length(default_tokenizer, fmt, "word " * 200, model)
    with pytest.raises(DatasetError, match=r"new tokens exceed"):
        check_prompt_length(default_tokenizer, fmt, "word " * 50, model, extra_tokens=100)


def test_scored_rows_longer_than_the_tokenizer_limit_are_refused(default_tokenizer, monkeypatch):
    monkeypatch.setattr(default_tokenizer, "model_max_length", 64)
    encode_completion(default_tokenizer, PromptFormat(), "q", "word " * 20)
    with pytest.raises(DatasetError, match="context of 64"):
        encode_completion(default_tokenizer, PromptFormat(), "q", "word " * 70)


def test_evaluate_refuses_rows_longer_than_the_context_naming_the_row(tmp_path, capsys, default_tokenizer):
    model_dir = tmp_path / "tiny"  # max_position_embeddings 128
    build_tiny_model("llama", vocab_size=len(default_tokenizer)).save_pretrained(model_dir)
    default_tokenizer.save_pretrained(model_dir)
    data = tmp_path / "long.jsonl"
    rows = [{"question": "short", "matching": "yes", "not_matching": "no"},
            {"question": "word " * 300, "matching": "yes", "not_matching": "no"}]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    vectors = tmp_path / "vectors"
    SteeringInterventions({1: DynamicWeightUpdate.from_vector(torch.ones(32))}).save(vectors)
    code = cli.main(["evaluate", str(vectors), "--dataset", str(data), "--model", str(model_dir), "--no-plots",
                     "--no-manifold", "--no-progress", "--multipliers=0,1"])
    err = capsys.readouterr().err
    assert code == 2 and f"{data} (test), pair 1" in err and "context of 128" in err and "Traceback" not in err
