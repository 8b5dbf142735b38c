"""Every file of the generated hostile corpus (tests/hostile_corpus.py) is rejected by the CLI:
non-zero exit, no traceback, the file or directory named, nothing written, no code run.

The whole corpus goes through `cli.main` in this process (hundreds of cases, seconds); a sample of
each kind also goes through a real `python -m easyedit_split.cli` subprocess.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from easyedit_split import cli
from hostile_corpus import Case, build_corpus

from conftest import build_tiny_model

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


SAMPLE = ("generate:torch_pickle_code", "evaluate:stacked-posinf", "train:escaping_name", "generate-multipliers:empty")
# (each real process costs seconds of imports; the kill-while-saving test runs `generate` on a half-written directory)


@pytest.mark.parametrize("name", SAMPLE)
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
