"""The generation-side run record: every input of a generated row is in the resume fingerprint, and a
malformed `generation_run.json` or `generations.jsonl` ends in an error naming the file (and line)."""
from __future__ import annotations

import copy


import pytest
import torch

from easyedit_split.generation import GenerationSettings
from easyedit_split.generation_eval.evaluator import (GENERATIONS_FILE, JUDGE_CACHE_FILE, RUN_FILE, GenerationEvaluator,
                                                      GenerationRunError)
from easyedit_split.interventions import DynamicWeightUpdate
from easyedit_split.prompts import PromptFormat

PROMPTS = ["How was your day?", "Describe the sea."]


@pytest.fixture
def updates():
    torch.manual_seed(3)
    return {1: DynamicWeightUpdate.from_vector(torch.randn(32))}


def run(model, tokenizer, updates, out, fmt=None, **options):
    defaults = dict(multipliers=(0.0, 2.0), settings=GenerationSettings(max_new_tokens=3, batch_size=4),
                    perplexity=False, progress=False)
    defaults.update(options)
    evaluator = GenerationEvaluator(model, tokenizer, prompt_format=fmt or PromptFormat(), **defaults)
    return evaluator.compare({"vec": updates}, PROMPTS, out_dir=out)


def test_a_resume_in_another_dtype_refuses_naming_dtype(tiny_chat_model, default_tokenizer, updates, tmp_path):
    run(tiny_chat_model, default_tokenizer, updates, tmp_path)
    rows = (tmp_path / GENERATIONS_FILE).read_bytes()
    half = copy.deepcopy(tiny_chat_model).to(torch.bfloat16)  # the session's model stays float32
    with pytest.raises(GenerationRunError, match=r"model\.dtype: \"float32\" -> \"bfloat16\""):
        run(half, default_tokenizer, {1: updates[1].to(torch.bfloat16)}, tmp_path)
    assert (tmp_path / GENERATIONS_FILE).read_bytes() == rows  # nothing mixed in


@pytest.mark.parametrize("what, change, named", [
    ("multipliers", dict(multipliers=(0.0, 3.0)), "multipliers"),
    ("seed", dict(settings=GenerationSettings(max_new_tokens=3, batch_size=4, seed=5)), "settings.seed"),
    ("batch", dict(settings=GenerationSettings(max_new_tokens=3, batch_size=2)), "settings.batch_size"),
    ("items", dict(dev_fraction=0.0), "prompts_sha256"),
    ("format", dict(fmt=PromptFormat(system_prompt="Be brief.")), "prompt_format.system_prompt"),
])
def test_every_generation_input_is_in_the_fingerprint(tiny_chat_model, default_tokenizer, updates, tmp_path, what,
                                                      change, named):
    run(tiny_chat_model, default_tokenizer, updates, tmp_path)
    with pytest.raises(GenerationRunError, match=named.replace(".", r"\.")):
        run(tiny_chat_model, default_tokenizer, updates, tmp_path, **change)


def test_other_weights_refuse(tiny_chat_model, default_tokenizer, updates, tmp_path):
    run(tiny_chat_model, default_tokenizer, updates, tmp_path)
    with torch.no_grad():
        tiny_chat_model.model.embed_tokens.weight[5] += 1.0
    with pytest.raises(GenerationRunError, match=r"model\.weights_sha256"):
        run(tiny_chat_model, default_tokenizer, updates, tmp_path)


def test_scoring_only_options_resume(tiny_chat_model, default_tokenizer, updates, tmp_path):
    first = run(tiny_chat_model, default_tokenizer, updates, tmp_path)
    again = run(tiny_chat_model, default_tokenizer, updates, tmp_path, samples_shown=1, answer_accuracy="off")
    assert [r["pred"] for r in again.rows] == [r["pred"] for r in first.rows]


def test_rows_without_a_run_record_are_refused(tiny_chat_model, default_tokenizer, updates, tmp_path):
    run(tiny_chat_model, default_tokenizer, updates, tmp_path)
    (tmp_path / RUN_FILE).unlink()
    with pytest.raises(GenerationRunError, match=RUN_FILE):
        run(tiny_chat_model, default_tokenizer, updates, tmp_path)


@pytest.mark.parametrize("text, why", [("{not json", "malformed JSON at line 1"), ("[1, 2]", "not the run record"),
                                       (b"\xff\xfe{}", "invalid UTF-8"), ("[" * 100000, "nested too deeply|malformed")])
def test_a_malformed_run_record_names_the_file(tiny_chat_model, default_tokenizer, updates, tmp_path, text, why):
    run(tiny_chat_model, default_tokenizer, updates, tmp_path)
    path = tmp_path / RUN_FILE
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(GenerationRunError, match=why) as info:
        run(tiny_chat_model, default_tokenizer, updates, tmp_path)
    assert str(path) in str(info.value) and "delete" in str(info.value)


@pytest.mark.parametrize("line, why", [
    ("{oops", "not JSON"), ("[1]", "not an object"), ('{"method": "vec"}', "key 'multiplier' is missing"),
    ('{"method": "vec", "multiplier": "2", "index": 0, "pred": [], "intervention": "x"}', "key 'multiplier' is \"2\""),
    ('{"method": "vec", "multiplier": 2.0, "index": 0, "pred": [3], "intervention": "x"}', "list of strings"),
])
def test_a_malformed_generations_line_names_file_and_line(tiny_chat_model, default_tokenizer, updates, tmp_path,
                                                           line, why):
    run(tiny_chat_model, default_tokenizer, updates, tmp_path)
    path = tmp_path / GENERATIONS_FILE
    lines = path.read_text().splitlines(keepends=True)
    lines[1] = line + "\n"
    path.write_text("".join(lines))
    with pytest.raises(GenerationRunError, match=why) as info:
        run(tiny_chat_model, default_tokenizer, updates, tmp_path)
    assert f"{path}: line 2" in str(info.value)


def test_invalid_utf8_in_generations_names_the_line(tiny_chat_model, default_tokenizer, updates, tmp_path):
    run(tiny_chat_model, default_tokenizer, updates, tmp_path)
    path = tmp_path / GENERATIONS_FILE
    path.write_bytes(path.read_bytes() + b'{"a": "\xff"}\n')
    with pytest.raises(GenerationRunError, match="invalid UTF-8"):
        run(tiny_chat_model, default_tokenizer, updates, tmp_path)


def test_judge_answers_with_other_settings_are_refused(tiny_chat_model, default_tokenizer, updates, tmp_path):
    from easyedit_split.judging import OpenAICompatibleJudge

    judge = OpenAICompatibleJudge("j", base_url="http://127.0.0.1:9", api_key="k", temperature=0.0)
    evaluator = GenerationEvaluator(tiny_chat_model, default_tokenizer, prompt_format=PromptFormat(), judge=judge,
                                    concept="c", multipliers=(0.0,), progress=False)
    from easyedit_split.generation_eval.items import make_items

    items = make_items(PROMPTS, 0.5, 0)
    evaluator._check_run(tmp_path, items)
    (tmp_path / JUDGE_CACHE_FILE).write_text("")  # answers given under temperature 0
    hotter = GenerationEvaluator(tiny_chat_model, default_tokenizer, prompt_format=PromptFormat(), concept="c",
                                 judge=OpenAICompatibleJudge("j", base_url="http://127.0.0.1:9", api_key="k",
                                                             temperature=0.7), multipliers=(0.0,), progress=False)
    with pytest.raises(GenerationRunError, match=r"judge_cache\.jsonl.*temperature: 0\.0 -> 0\.7"):
        hotter._check_run(tmp_path, items)
    other_model = GenerationEvaluator(tiny_chat_model, default_tokenizer, prompt_format=PromptFormat(), concept="c",
                                      judge=OpenAICompatibleJudge("k", base_url="http://127.0.0.1:9", api_key="k"),
                                      multipliers=(0.0,), progress=False)
    other_model._check_run(tmp_path, items)  # another judge model: its answers are keyed apart
    assert "api_key" not in (tmp_path / RUN_FILE).read_text() and '"k"' not in (tmp_path / RUN_FILE).read_text()


def test_cli_resume_with_another_dtype_and_a_malformed_record(tiny_chat_model, default_tokenizer, updates, tmp_path,
                                                              capsys):
    from easyedit_split.cli import main
    from easyedit_split.steering import SteeringInterventions

    model_dir = tmp_path / "tiny"
    tiny_chat_model.save_pretrained(model_dir)
    default_tokenizer.save_pretrained(model_dir)
    SteeringInterventions(updates).save(tmp_path / "caa_vector")
    out = tmp_path / "report"
    argv = ["evaluate", str(tmp_path / "caa_vector"), "--dataset", "sentiment", "--multipliers=0,2",
            "--max-examples", "2", "--no-manifold", "--bootstrap", "10", "--no-progress", "--model", str(model_dir),
            "--output-dir", str(out), "--generate", "--max-prompts", "2", "--max-new-tokens", "2", "--no-plots"]
    assert main(argv + ["--dtype", "float32"]) == 0
    capsys.readouterr()
    assert main(argv + ["--dtype", "bfloat16"]) == 2
    err = capsys.readouterr().err
    assert "dtype" in err and GENERATIONS_FILE in err and "Traceback" not in err
    (out / "generation" / RUN_FILE).write_text("{broken")
    assert main(argv + ["--dtype", "float32"]) == 2
    err = capsys.readouterr().err
    assert str(out / "generation" / RUN_FILE) in err and "malformed JSON" in err and "Traceback" not in err
