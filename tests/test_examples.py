"""examples/: run_split.py (EasyEdit's run_SPILT.py flags) and the hydra entry points, in-process on a tiny chat model."""
from __future__ import annotations

import csv
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
import yaml

from easyedit_split.data import load_dataset
from easyedit_split.interventions import DynamicWeightUpdate, steer
from easyedit_split.prompts import PromptFormat, encode_completion, steering_prefix_length

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
TINY = ["--set", "layers=[2]", "--set", "n_epochs=1", "--set", "batch_size=2", "--max-examples", "4", "--quiet"]


def _load(name: str):
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    spec = importlib.util.spec_from_file_location(f"examples_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def run_split():
    return _load("run_split")


@pytest.fixture(scope="module")
def trained(run_split, tiny_chat_model, default_tokenizer, tmp_path_factory):
    """`--mode both` for spilt/vector on the shipped sentiment data: train, then apply at m = 2."""
    out = tmp_path_factory.mktemp("run_split")
    argv = ["--dataset", "sentiment", "--method", "split", "--model_name", "smollm2-135m-instruct",
            "--intervention_method", "vector", "--mode", "both", "--multipliers", "2.0", "--output-dir", str(out),
            "--generation-data-size", "2", "--max-new-tokens", "4", *TINY]
    assert run_split.main(argv, model=tiny_chat_model, tokenizer=default_tokenizer) == 0
    return out


def test_generate_writes_easyedits_layout(trained):
    directory = trained / "vectors/smollm2-135m-instruct/spilt/sentiment/spilt_vector"
    vector = torch.load(directory / "layer_2.pt", weights_only=True)
    assert vector.shape == (32,) and torch.isfinite(vector).all()
    assert json.loads((directory / "metadata.json").read_text())["layers"] == [2]


def test_apply_writes_easyedits_generation_records(trained):
    path = trained / "generation/smollm2-135m-instruct/spilt/sentiment/spilt_vector/m2.0/sentiment_results.json"
    records = json.loads(path.read_text())
    assert len(records) == 2
    # EasyEdit's keys, plus the positions rule the texts were generated under (docs/conventions.md)
    assert set(records[0]) == {"input", "orig_pred", "pred", "reference_response", "complete_output", "steer_positions"}
    assert records[0]["steer_positions"] in ("easyedit", "after_prefix", "all")
    assert len(records[0]["pred"]) == 1 and records[0]["input"] in records[0]["complete_output"][0]


def test_apply_orig_pred_is_unsteered_greedy_and_pred_moves(trained, tiny_chat_model, default_tokenizer):
    """`orig_pred` equals plain greedy `model.generate` on the chat prompt; at m = 2 `pred` differs from it."""
    path = trained / "generation/smollm2-135m-instruct/spilt/sentiment/spilt_vector/m2.0/sentiment_results.json"
    records = json.loads(path.read_text())
    for record in records:
        text = default_tokenizer.apply_chat_template([{"role": "user", "content": record["input"]}], tokenize=False,
                                                     add_generation_prompt=True)
        ids = default_tokenizer(text, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            out = tiny_chat_model.generate(**ids, do_sample=False, max_new_tokens=4,
                                           pad_token_id=default_tokenizer.eos_token_id)
        greedy = default_tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
        assert record["orig_pred"][0].strip() == greedy.strip()
        assert record["pred"][0] != record["orig_pred"][0]
        assert record["complete_output"][0] == text + record["pred"][0]


def test_loss_mode_writes_easyedits_csv_and_per_example_nlls(run_split, trained, tiny_chat_model, default_tokenizer):
    argv = ["--dataset", "sentiment", "--method", "spilt", "--model_name", "smollm2-135m-instruct",
            "--intervention_method", "vector", "--mode", "loss", "--multipliers", "1.5", "--output-dir", str(trained), *TINY]
    assert run_split.main(argv, model=tiny_chat_model, tokenizer=default_tokenizer) == 0
    base = trained / "vectors/smollm2-135m-instruct/get_sft_loss/spilt/sentiment/spilt_vector"
    with open(base / "vector_spilt_m1.5_winning_only" / "train_losses.csv") as handle:
        winning = list(csv.reader(handle))
    with open(base / "vector_spilt_m1.5_losing_only" / "train_losses.csv") as handle:
        losing = list(csv.reader(handle))
    assert winning[0] == ["epoch", "step", "pos_steer_loss", "pos_steering_factors", "neg_steering_factors"]
    assert len(winning) == 1 + 4 * 2  # 4 examples x (orig_add, orig_sub)
    assert winning[1][3] == "tensor([1.5000])" and winning[2][3] == "tensor([-1.5000])"
    # orig_add at +m: the winner is the matching completion; orig_sub at -m: the not-matching one
    with open(base / "per_example_nll.csv") as handle:
        tidy = list(csv.DictReader(handle))
    at = {(int(r["example"]), float(r["multiplier"])): r for r in tidy}
    assert sorted({m for _, m in at}) == [-1.5, 0.0, 1.5]
    assert float(winning[1][2]) == pytest.approx(float(at[0, 1.5]["matching_nll"]), rel=1e-6)
    assert float(winning[2][2]) == pytest.approx(float(at[0, -1.5]["not_matching_nll"]), rel=1e-6)
    assert float(losing[1][2]) == pytest.approx(float(at[0, 1.5]["not_matching_nll"]), rel=1e-6)

    # independent check: full forward of example 0's matching sequence with the vector at +1.5
    pair = load_dataset("sentiment")[0]
    encoded = encode_completion(default_tokenizer, PromptFormat(), pair.question, pair.matching)
    ids = torch.tensor([encoded.input_ids])
    vector = torch.load(trained / "vectors/smollm2-135m-instruct/spilt/sentiment/spilt_vector/layer_2.pt", weights_only=True)
    # steered from the first token after the chat template's common prefix, as in training
    steered = torch.arange(ids.shape[1]).unsqueeze(0) >= steering_prefix_length(default_tokenizer, PromptFormat())
    with torch.no_grad(), steer(tiny_chat_model, {2: DynamicWeightUpdate.from_vector(vector)}, 1.5) as handle:
        handle.positions = steered
        logits = tiny_chat_model(ids).logits[0, :-1].float()
    token_nll = -torch.log_softmax(logits, -1).gather(-1, ids[0, 1:, None])[:, 0]
    by_hand = token_nll[encoded.prompt_length - 1 :].mean().item()
    assert float(winning[1][2]) == pytest.approx(by_hand, rel=1e-4)


def test_evaluate_mode_writes_the_report(run_split, trained, tiny_chat_model, default_tokenizer):
    argv = ["--dataset", "sentiment", "--method", "spilt", "--model_name", "smollm2-135m-instruct",
            "--intervention_method", "vector", "--mode", "evaluate", "--multipliers", "-2", "0", "2",
            "--output-dir", str(trained), "--no-manifold", *TINY]
    assert run_split.main(argv, model=tiny_chat_model, tokenizer=default_tokenizer) == 0
    report = trained / "results/smollm2-135m-instruct/sentiment/preference_utility"
    assert (report / "preference_utility.png").is_file()
    written = json.loads((report / "results.json").read_text())
    assert "spilt_vector" in json.dumps(written)
    # results.csv's m = 0 row: the mean NLL difference of the evaluated pairs under a plain forward
    with open(report / "results.csv") as handle:
        rows = {float(r["multiplier"]): r for r in csv.DictReader(handle)}
    assert sorted(rows) == [-2.0, 0.0, 2.0]

    def nll(question, completion):
        encoded = encode_completion(default_tokenizer, PromptFormat(), question, completion)
        ids = torch.tensor([encoded.input_ids])
        with torch.no_grad():
            logp = torch.log_softmax(tiny_chat_model(ids).logits[0].double(), -1)
        targets = ids[0, encoded.prompt_length:]
        return -logp[encoded.prompt_length - 1:-1].gather(1, targets[:, None]).sum().item()

    pairs = load_dataset("sentiment", split="test")[:4]
    expected = sum(nll(p.question, p.not_matching) - nll(p.question, p.matching) for p in pairs) / len(pairs)
    assert float(rows[0.0]["pref_odds_mean"]) == pytest.approx(expected, rel=1e-3, abs=1e-3)


@pytest.mark.parametrize("argv", [
    # EasyEdit's run_SPILT.py / run_SPILT.sh examples, unchanged apart from --dry_run
    "--dataset axbench --method SPLIT --model_name gemma-2-9b-it --intervention_method local_weight --mode generate "
    "--multipliers 1.0 --device cuda:0 --base_dir {repo}",
    "--dataset psychopathy --method all --model_name qwen2.5-7b-it --intervention_method all --mode both --device cuda:0",
    "--dataset psychopathy --method spilt --model_name gemma-2-9b-it --intervention_method local_weight --mode loss "
    "--multipliers 0.2",
    "--dataset axbench --method sft --model_name gemma-2-9b-it --intervention_method lora --mode apply --multipliers 1.0 2.0",
])
def test_easyedit_flags_resolve_hparams(run_split, argv, caplog):
    caplog.set_level("INFO")
    assert run_split.main(argv.format(repo=REPO).split() + ["--dry_run"]) == 0
    assert "[SKIP]" not in caplog.text  # every (method, intervention) found its hparams file


def test_unknown_set_key_is_an_error(run_split, tiny_chat_model, default_tokenizer, caplog):
    argv = ["--dataset", "sentiment", "--method", "caa", "--model_name", "smollm2-135m-instruct",
            "--intervention_method", "vector", "--mode", "generate", "--set", "layer=[2]"]
    assert run_split.main(argv, model=tiny_chat_model, tokenizer=default_tokenizer) == 1
    assert "--set layer: no method file has this key" in caplog.text


def test_hydra_entry_points_with_overrides(tiny_chat_model, default_tokenizer, tmp_path, monkeypatch):
    from hydra import compose, initialize_config_dir

    generate_module, apply_module = _load("vectors_generate"), _load("vectors_apply")
    method = yaml.safe_load((REPO / "hparams/sentiment/smollm2-135m-instruct/spilt/generate_spilt_vector.yaml").read_text())
    method.update(layers=[2], n_epochs=1, batch_size=2, max_num_of_examples=4)
    (tmp_path / "generate.yaml").write_text(yaml.safe_dump(method))
    (tmp_path / "apply.yaml").write_text(yaml.safe_dump({"alg_name": "spilt", "layers": [2], "multipliers": [1.0]}))
    monkeypatch.chdir(tmp_path)  # relative paths in the config are read from the working directory
    with initialize_config_dir(config_dir=str(REPO / "hparams"), version_base="1.2"):
        cfg = compose("config", overrides=[
            "steer_train_hparam_paths=[generate.yaml]", "steer_vector_output_dirs=[vectors/]",
            "steer_train_dataset=food", "+steering_factors=[2.0]",
        ])
        generated = generate_module.generate(cfg, model=tiny_chat_model, tokenizer=default_tokenizer)
        assert set(generated["food"]) == {"spilt"}
        assert (tmp_path / "vectors/food/spilt_vector/layer_2.pt").is_file()
        meta = json.loads((tmp_path / "vectors/food/spilt_vector/metadata.json").read_text())
        assert meta["hparams"]["steering_factors"] == [2.0]  # the +override reached the method file

        cfg = compose("apply_config", overrides=[
            "apply_steer_hparam_paths=[apply.yaml]", "steer_vector_load_dir=[vectors/food/spilt_vector]",
            "generation_data=[food]", "generation_data_size=2", "generation_output_dir=generation/",
            "generation_params.max_new_tokens=3", "+multipliers=[4.0]",
        ])
        outputs = apply_module.apply_and_generate(cfg, model=tiny_chat_model, tokenizer=default_tokenizer)
    records = json.loads((tmp_path / "generation/food_results.json").read_text())
    assert len(records) == len(outputs["food"]) == 2 and len(records[0]["pred"]) == 1


@pytest.mark.parametrize("mode", ["generate", "apply", "loss"])
def test_a_base_dir_without_hparams_is_an_error_that_says_where_it_looked(run_split, tmp_path, caplog, mode):
    """Every run skipped is not a success: exit 1, each run named, the directories looked in named."""
    caplog.set_level("INFO")
    argv = ["--dataset", "sentiment", "--method", "all", "--model_name", "smollm2-135m-instruct",
            "--intervention_method", "vector", "--mode", mode, "--base_dir", str(tmp_path), "--dry_run"]
    assert run_split.main(argv) == 1
    assert "[SUCCESS] all runs completed" not in caplog.text
    assert "did none of the work asked" in caplog.text
    assert str(tmp_path / "hparams") in caplog.text  # where it looked


def test_evaluate_with_nothing_trained_is_an_error_naming_the_directory(run_split, tmp_path, caplog):
    caplog.set_level("INFO")
    argv = ["--dataset", "sentiment", "--method", "caa", "--model_name", "smollm2-135m-instruct",
            "--intervention_method", "vector", "--mode", "evaluate", "--output-dir", str(tmp_path)]
    assert run_split.main(argv) == 1
    assert "nothing trained at" in caplog.text and str(tmp_path / "vectors") in caplog.text


def test_a_judge_without_a_concept_is_refused_before_the_sweep(run_split, trained, tmp_path, monkeypatch, caplog):
    """A data file without a concept column and no --concept: refused before the model is asked anything."""
    from easyedit_split.data import dataset_path

    data = tmp_path / "mine.jsonl"
    data.write_text(dataset_path("sentiment", "test").read_text(encoding="utf-8"), encoding="utf-8")
    monkeypatch.setenv("EASYEDIT_SPLIT_JUDGE_BASE_URL", "http://127.0.0.1:1")
    calls = []

    class Refuse:
        def __call__(self, *a, **k):
            calls.append(a)
            raise AssertionError("the model was called")

    argv = ["--dataset", "sentiment", "--method", "split", "--model_name", "smollm2-135m-instruct",
            "--intervention_method", "vector", "--mode", "evaluate", "--output-dir", str(trained),
            "--eval-data", str(data), "--judge", "openai:m", "--quiet"]
    assert run_split.main(argv, model=Refuse(), tokenizer=object()) == 1
    assert "--concept" in caplog.text and "no concept column" in caplog.text and calls == []
