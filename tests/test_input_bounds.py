"""Every input is bounded before work starts, and every error names the file, key or flag (issue 21, rules 4-6).

Checked through the command line (non-zero exit, no traceback, the file or flag named) and the API:
`override_model_weights_path` loads a state dict over the model strictly; YAML alias bombs, huge rows,
invalid UTF-8, non-finite or overflowing numbers and malformed judge-cache lines are refused naming
what is at fault; `evaluate` reports every cheap problem before it resolves the model.
"""
from __future__ import annotations

import hashlib

import json
import resource
import time
from pathlib import Path

import pytest
import torch

from conftest import build_tiny_model
from easyedit_split import cli
from easyedit_split.data import MAX_ROW_BYTES, load_pairs_file
from easyedit_split.errors import DatasetError, HparamsError, ModelError, MultiplierError, excerpt
from easyedit_split.hparams import load_hparams
from easyedit_split.hparams.reading import MAX_HPARAMS_BYTES, MAX_INT_KEY
from easyedit_split.judging.cache import JudgeCache, JudgeCacheError
from easyedit_split.models import WEIGHT_OVERRIDE_ATTR, load_model_and_tokenizer, load_weight_override
from easyedit_split.multipliers import parse_multipliers

ROW = {"question": "q", "matching": "yes", "not_matching": "no"}


def _cli(argv, capsys) -> tuple[int, str]:
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as exit:  # argparse's own errors
        code = exit.code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def _tree(root: Path) -> set:
    return {(str(p), p.stat().st_size) for p in root.rglob("*")}


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory, default_tokenizer):
    """Two tiny Llamas with different weights (seed 0 and 1), saved as model directories."""
    dirs = []
    for seed in (0, 1):
        directory = tmp_path_factory.mktemp(f"tiny_{seed}")
        build_tiny_model("llama", seed=seed, vocab_size=len(default_tokenizer)).save_pretrained(directory)
        default_tokenizer.save_pretrained(directory)
        dirs.append(directory)
    return dirs


@pytest.fixture
def data_file(tmp_path) -> Path:
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps({**ROW, "question": f"q{i}"}) + "\n" for i in range(4)))
    return path


# ----------------------------------------------------------------------------- override_model_weights_path


def test_override_loads_the_state_dict_over_the_model(model_dirs, tmp_path):
    base, _ = load_model_and_tokenizer(model_dirs[0])
    target, _ = load_model_and_tokenizer(model_dirs[1])
    override = tmp_path / "weights.pt"
    torch.save({k: v.clone() for k, v in target.state_dict().items()}, override)
    model, _ = load_model_and_tokenizer(model_dirs[0], override_weights_path=override)
    for key, value in target.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    assert not all(torch.equal(base.state_dict()[k], model.state_dict()[k]) for k in base.state_dict())
    record = getattr(model.config, WEIGHT_OVERRIDE_ATTR)
    assert record["path"] == str(override.resolve()) and len(record["sha256"]) == 64


def test_a_partial_safetensors_override_changes_only_its_keys(model_dirs, tmp_path):
    from safetensors.torch import save_file

    base, _ = load_model_and_tokenizer(model_dirs[0])
    key = "model.layers.1.mlp.down_proj.weight"
    new = torch.full_like(base.state_dict()[key], 0.25)
    save_file({key: new}, str(tmp_path / "part.safetensors"))
    model, _ = load_model_and_tokenizer(model_dirs[0], override_weights_path=tmp_path / "part.safetensors")
    for name, value in base.state_dict().items():
        assert torch.equal(model.state_dict()[name], new if name == key else value), name


def test_override_refuses_missing_files_foreign_keys_shapes_and_pickles(model_dirs, tmp_path):
    model, _ = load_model_and_tokenizer(model_dirs[0])
    with pytest.raises(ModelError, match=f"override_model_weights_path: {tmp_path / 'nope.pt'}: no such file"):
        load_weight_override(model, tmp_path / "nope.pt")
    torch.save({"model.not_a_layer.weight": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(ModelError, match=r"foreign\.pt: 1 key\(s\) the model does not have: model\.not_a_layer\.weight"):
        load_weight_override(model, tmp_path / "foreign.pt")
    torch.save({"model.norm.weight": torch.zeros(7)}, tmp_path / "shape.pt")
    with pytest.raises(ModelError, match=r"shape\.pt: shape mismatch: model\.norm\.weight \(7,\) \(model \(32,\)\)"):
        load_weight_override(model, tmp_path / "shape.pt")

    class Evil:
        def __reduce__(self):
            return (Path.touch, (tmp_path / "PWNED",))

    torch.save({"model.norm.weight": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(ModelError, match="evil.pt: not a readable state-dict file"):
        load_weight_override(model, tmp_path / "evil.pt")
    assert not (tmp_path / "PWNED").exists()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.save({"model.norm.weight": torch.full((32,), float("nan"))}, tmp_path / "nan.pt")
    with pytest.raises(ModelError, match="nan.pt: non-finite values in model.norm.weight"):
        load_weight_override(model, tmp_path / "nan.pt")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # refused before any copy


def test_train_with_an_override_trains_on_the_override_weights(model_dirs, tmp_path, data_file, capsys):
    """CAA on base weights + an override of model B's weights == CAA on model B (an independent run)."""
    target, _ = load_model_and_tokenizer(model_dirs[1])
    override = tmp_path / "b.pt"
    torch.save(target.state_dict(), override)
    vectors = {}
    for name, model_dir, extra in (("override", model_dirs[0], f"override_model_weights_path: {override}\n"),
                                   ("direct", model_dirs[1], ""), ("base", model_dirs[0], "")):
        hparams = tmp_path / f"{name}.yaml"
        hparams.write_text(f"alg_name: caa\nlayers: [1]\nmodel_name_or_path: {model_dir}\n{extra}")
        code, err = _cli(["train", "--hparams", hparams, "--dataset", data_file, "--output-dir", tmp_path / name], capsys)
        assert code == 0, err
        saved = next((tmp_path / name).rglob("layer_1.pt"))
        vectors[name] = torch.load(saved, weights_only=True)
        recorded = json.loads((saved.parent / "metadata.json").read_text()).get("weight_override")
        if name == "override":  # the saved metadata says the weights were not the named model's
            assert recorded["path"] == str(override.resolve())
            assert recorded["sha256"] == hashlib.sha256(override.read_bytes()).hexdigest()
        else:
            assert recorded is None
    assert torch.allclose(vectors["override"], vectors["direct"], atol=1e-6)
    assert not torch.allclose(vectors["override"], vectors["base"], atol=1e-3)


def test_train_with_a_missing_override_file_fails_naming_it_before_the_model(tmp_path, data_file, capsys, monkeypatch):
    import easyedit_split.editor as editor_module

    monkeypatch.setattr(editor_module, "load_model_and_tokenizer", lambda *a, **k: pytest.fail("model loaded"))
    missing = tmp_path / "missing_weights.safetensors"
    hparams = tmp_path / "h.yaml"
    hparams.write_text(f"alg_name: caa\nlayers: [1]\nmodel_name_or_path: x\noverride_model_weights_path: {missing}\n")
    code, err = _cli(["train", "--hparams", hparams, "--dataset", data_file, "--output-dir", tmp_path / "out"], capsys)
    assert code == 2 and str(missing) in err and str(hparams) in err and "no such file" in err
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- YAML bounds


def _alias_bomb() -> str:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi"):
        lines.append(f"{name}: &{name} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]")
    return "alg_name: caa\nlayers: [1]\n" + "\n".join(lines) + "\n"


def test_a_yaml_alias_bomb_is_refused_quickly_with_a_short_message(tmp_path, data_file, capsys):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(_alias_bomb())
    assert len(bomb.read_bytes()) < 800
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    code, err = _cli(["train", "--hparams", bomb, "--dataset", data_file, "--output-dir", tmp_path / "out"], capsys)
    assert code == 2 and str(bomb) in err and "alias" in err and len(err) < 1000
    assert time.perf_counter() - started < 5
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 200_000  # KiB: no expansion happened
    code, err = _cli(["train", "--hparams", tmp_path / "ok.yaml", "--set", "x=[&a [1,2], *a, *a]"], capsys)
    assert code == 2  # --set values: bounded the same way (a few aliases are fine, the file is missing)


def test_a_few_yaml_aliases_still_load(tmp_path):
    path = tmp_path / "a.yaml"
    path.write_text("alg_name: caa\nlayers: &l [1, 2]\nsteering_factors: [2.0]\n")
    assert load_hparams(path, kind="train").layers == [1, 2]


def test_oversized_or_non_utf8_hparams_files_are_refused_naming_them(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text("alg_name: caa\n# " + "x" * MAX_HPARAMS_BYTES + "\n")
    with pytest.raises(HparamsError, match=f"{big}: .* bytes; an hparams file is at most {MAX_HPARAMS_BYTES}"):
        load_hparams(big)
    binary = tmp_path / "latin1.yaml"
    binary.write_bytes(b"alg_name: caa\nsystem_prompt: caf\xe9\n")
    with pytest.raises(HparamsError, match=f"{binary}: not UTF-8 text"):
        load_hparams(binary)


def test_errors_quote_a_bounded_excerpt_of_the_input(tmp_path):
    path = tmp_path / "long.yaml"
    path.write_text("alg_name: caa\nlayers: [1]\nsteer_positions: " + "y" * 100_000 + "\n")
    with pytest.raises(HparamsError) as caught:
        load_hparams(path)
    assert str(path) in str(caught.value) and "steer_positions" in str(caught.value) and len(str(caught.value)) < 600
    assert len(excerpt("z" * 10**6)) < 250 and excerpt([0] * 10**6) == "<list of 1000000 items>"


# ----------------------------------------------------------------------------- numbers


@pytest.mark.parametrize("flag,value", [("--fast-path-memory-mb", "inf"), ("--fast-path-memory-mb", "nan"),
                                        ("--fast-path-memory-mb", "-1"), ("--fast-path-memory-mb", "1e999"),
                                        ("--fast-path-memory-mb", "0")])
def test_numeric_train_flags_are_finite_and_in_range(flag, value, tmp_path, data_file, capsys):
    hparams = tmp_path / "h.yaml"
    hparams.write_text("alg_name: sft\nlayers: [1]\n")
    code, err = _cli(["train", "--hparams", hparams, "--dataset", data_file, f"{flag}={value}"], capsys)
    assert code == 2 and f"argument {flag}" in err and value in err


@pytest.mark.parametrize("flag,value", [("--concept-id", "1e999"), ("--concept-id", "-1"), ("--concept-id", "9" * 40),
                                        ("--max-examples", "0"), ("--batch-size", "nan"), ("--bootstrap", "-5"),
                                        ("--seed", "1e999"), ("--max-prompts", "0"), ("--top-p", "inf"),
                                        ("--temperature", "nan"), ("--dev-fraction", "2")])
def test_numeric_evaluate_flags_are_finite_and_in_range(flag, value, tmp_path, data_file, capsys):
    code, err = _cli(["evaluate", tmp_path, "--dataset", data_file, f"{flag}={value}"], capsys)
    last = err.strip().splitlines()[-1]  # argparse prints its usage above the one-line error
    assert code == 2 and f"argument {flag}" in last and len(last) < 300


@pytest.mark.parametrize("text,key", [
    ("alg_name: sft\nlayers: [1]\nfast_path_memory_mb: .inf\n", "fast_path_memory_mb"),
    ("alg_name: sft\nlayers: [1]\nfast_path_memory_mb: 1e999\n", "fast_path_memory_mb"),
    ("alg_name: sft\nlayers: [1]\nfast_path_memory_mb: 1.0e+300\n", "fast_path_memory_mb"),
    ("alg_name: sft\nlayers: [1]\nlr: 1e400\n", "lr"),
    ("alg_name: sft\nlayers: [1]\nlr: " + "9" * 400 + "\n", "lr"),
    ("alg_name: sft\nlayers: [1]\nn_epochs: " + "9" * 40 + "\n", "n_epochs"),
    ("alg_name: caa\nlayers: [" + "9" * 40 + "]\n", "layers"),
    ("alg_name: caa\nlayers: [1]\nseed: .nan\n", "seed"),
    ("alg_name: caa\nlayers: [1]\nvllm_gpu_memory_utilization: .nan\n", "vllm_gpu_memory_utilization"),
    ("alg_name: caa\nlayers: [1]\nmultipliers: [1.0]\nconcept_id: 1e999\n", "concept_id"),
    ("alg_name: caa\nlayers: [1]\nmultipliers: [1.0]\nconcept_id: 1.0e999\n", "concept_id"),
    ("alg_name: caa\nlayers: [1]\nmultipliers: [1.0]\nconcept_id: " + "9" * 30 + "\n", "concept_id"),
])
def test_numeric_keys_are_finite_and_in_range(text, key, tmp_path):
    path = tmp_path / "h.yaml"
    path.write_text(text)
    with pytest.raises(HparamsError, match=f"{path}.*key '{key}'") as caught:
        load_hparams(path)
    assert len(str(caught.value)) < 600


def test_int_keys_up_to_the_bound_load(tmp_path):
    path = tmp_path / "h.yaml"
    path.write_text(f"alg_name: sft\nlayers: [1]\nseed: {MAX_INT_KEY}\nfast_path_memory_mb: 1e6\n")
    assert load_hparams(path).seed == MAX_INT_KEY


def test_multiplier_sweeps_are_bounded():
    with pytest.raises(MultiplierError, match="at most 10000"):
        parse_multipliers("-1e6:1e6:1e-6")
    with pytest.raises(MultiplierError, match="out of range"):
        parse_multipliers("1e300")
    with pytest.raises(MultiplierError) as caught:
        parse_multipliers("x" * 10**5)
    assert len(str(caught.value)) < 600
    assert parse_multipliers("-4:4:2") == [-4, -2, 0, 2, 4]


# ----------------------------------------------------------------------------- data files


def test_a_huge_row_is_refused_on_read_naming_file_and_line(tmp_path):
    path = tmp_path / "huge.jsonl"
    path.write_text(json.dumps(ROW) + "\n" + json.dumps({**ROW, "matching": "x" * (10 << 20)}) + "\n")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(DatasetError, match=rf"{path}, line 2: the row is longer than {MAX_ROW_BYTES} bytes"):
        load_pairs_file(path)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 100_000  # KiB: the line was not read whole
    as_json = tmp_path / "huge.json"
    as_json.write_text(json.dumps([ROW, {**ROW, "question": "x" * (MAX_ROW_BYTES + 1)}]))
    with pytest.raises(DatasetError, match=rf"{as_json}, row 1: the row holds {MAX_ROW_BYTES + 6} characters"):
        load_pairs_file(as_json)


def test_a_row_just_under_the_bound_loads(tmp_path):
    path = tmp_path / "ok.jsonl"
    path.write_text(json.dumps({**ROW, "matching": "y" * (MAX_ROW_BYTES - 100)}) + "\n")
    assert len(load_pairs_file(path)[0].matching) == MAX_ROW_BYTES - 100


@pytest.mark.parametrize("suffix,where", [(".jsonl", "line 2"), (".json", "file"), (".csv", "line")])
def test_invalid_utf8_in_a_dataset_names_the_file(tmp_path, suffix, where):
    path = tmp_path / f"bad{suffix}"
    if suffix == ".jsonl":
        path.write_bytes(json.dumps(ROW).encode() + b'\n{"question": "caf\xe9", "matching": "a", "not_matching": "b"}\n')
    elif suffix == ".json":
        path.write_bytes(b'[{"question": "caf\xe9", "matching": "a", "not_matching": "b"}]')
    else:
        path.write_bytes(b"question,matching,not_matching\nq,a,b\ncaf\xe9,a,b\n")
    with pytest.raises(DatasetError, match=rf"{path}, .*{where}.*not UTF-8"):
        load_pairs_file(path)


def test_an_overflowing_concept_id_names_the_file_and_row(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"question": "q", "pos_answer": "a", "neg_answer": "b", "concept_id": 1e999}\n')
    with pytest.raises(DatasetError, match=rf"{path}, line 1: field 'concept_id' must be an integer concept id"):
        load_pairs_file(path)
    path.write_text('{"question": "q", "pos_answer": "a", "neg_answer": "b", "concept_id": ' + "9" * 400 + "}\n")
    with pytest.raises(DatasetError, match=rf"{path}, line 1: field 'concept_id'"):
        load_pairs_file(path)


@pytest.mark.parametrize("kind", ["utf8", "huge_row", "concept_overflow"])
def test_bad_data_files_through_train_fail_before_the_model(kind, tmp_path, capsys, monkeypatch):
    import easyedit_split.editor as editor_module

    monkeypatch.setattr(editor_module, "load_model_and_tokenizer", lambda *a, **k: pytest.fail("model loaded"))
    path = tmp_path / f"{kind}.jsonl"
    if kind == "utf8":
        path.write_bytes(b'{"question": "\xff", "matching": "a", "not_matching": "b"}\n')
    elif kind == "huge_row":
        path.write_text(json.dumps({**ROW, "question": "w " * (MAX_ROW_BYTES // 2 + 1)}) + "\n")
    else:
        path.write_text('{"question": "q", "pos_answer": "a", "neg_answer": "b", "concept_id": 1e999}\n')
    hparams = tmp_path / "h.yaml"
    hparams.write_text("alg_name: caa\nlayers: [1]\nmodel_name_or_path: x\n")
    before = _tree(tmp_path)
    code, err = _cli(["train", "--hparams", hparams, "--dataset", path, "--output-dir", tmp_path / "out"], capsys)
    assert code == 2 and str(path) in err and len(err) < 1000
    assert _tree(tmp_path) == before


def test_train_checks_rows_against_the_context_before_training(model_dirs, tmp_path, capsys, monkeypatch):
    import easyedit_split.editor as editor_module

    monkeypatch.setattr(editor_module, "train_to_dir", lambda *a, **k: pytest.fail("trained"))
    path = tmp_path / "long.jsonl"
    path.write_text(json.dumps(ROW) + "\n" + json.dumps({**ROW, "matching": "word " * 400}) + "\n")
    hparams = tmp_path / "h.yaml"
    hparams.write_text(f"alg_name: caa\nlayers: [1]\nmodel_name_or_path: {model_dirs[0]}\n")
    code, err = _cli(["train", "--hparams", hparams, "--dataset", path, "--output-dir", tmp_path / "out"], capsys)
    assert code == 2 and f"{path} (train), pair 1" in err and "context of 128" in err
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- judge answers read back


def test_malformed_judge_cache_lines_name_the_file_and_line(tmp_path):
    path = tmp_path / "judge_cache.jsonl"
    good = json.dumps({"key": "k1", "answer": "Rating: 2", "rating": 2.0})
    for bad, message in ((b"\xff\xfe not text", "not UTF-8"), (b"[1, 2]", "no string 'key'"),
                         (b'{"key": "k2", "answer": 5}', "'answer' must be text"),
                         (b'{"key": "k2", "answer": "a", "rating": NaN}', "'rating' must be a finite number"),
                         (b"{oops", "not a cache entry")):
        path.write_bytes(good.encode() + b"\n" + bad + b"\n")
        with pytest.raises(JudgeCacheError, match=rf"{path}: line 2.*{message}"):
            JudgeCache(path)
    path.write_bytes(good.encode() + b"\n")
    assert JudgeCache(path).get("k1")["rating"] == 2.0


def test_malformed_judge_cache_through_easyedit_judge_integration(tmp_path):
    from easyedit_split.integrations.easyedit_judge import judge_results

    path = tmp_path / "c.jsonl"
    path.write_bytes(b"\xff\n")
    with pytest.raises(JudgeCacheError, match=f"{path}: line 1"):
        judge_results([{"input": "Hi", "pred": ["x"]}], concept="c", judge=object(), cache_path=path, progress=False)


# ----------------------------------------------------------------------------- evaluate: cheap checks first, all at once


def test_evaluate_reports_a_bad_data_file_and_a_missing_model_together(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("easyedit_split.models.load_model_and_tokenizer", lambda *a, **k: pytest.fail("model loaded"))
    vectors = tmp_path / "caa_vector"
    vectors.mkdir()
    torch.save(torch.randn(32), vectors / "layer_1.pt")  # EasyEdit's layout: no metadata, so no model named
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"question": "\xff"}\n')
    code, err = _cli(["evaluate", vectors, "--dataset", bad, "--no-progress"], capsys)
    assert code == 2 and str(bad) in err and "model" in err.lower() and "2 problems" in err
    code, err = _cli(["evaluate", tmp_path / "nowhere", "--dataset", bad, "--multipliers=nan"], capsys)
    assert code == 2 and str(bad) in err and "nowhere" in err and "multipliers" in err
