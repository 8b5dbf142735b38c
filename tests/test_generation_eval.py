"""Generation-side evaluation end to end: steered generations, judge ratings from a real local HTTP server,
answer accuracy, lexical scores, resume after a kill, factor selection on dev and reporting on test."""
from __future__ import annotations

import json

import pytest
import torch

from easyedit_split.generation_eval import evaluator as evaluator_module
from easyedit_split.generation_eval.evaluator import GENERATIONS_FILE, GenerationEvaluator, GenerationRunError
from easyedit_split.generation_eval.items import GenerationItem, dev_test_labels, load_generation_items
from easyedit_split.generation_eval.report import GenerationReport
from easyedit_split.generation import GenerationSettings, generate_steered
from easyedit_split.interventions import DynamicWeightUpdate
from easyedit_split.judging import OpenAICompatibleJudge
from easyedit_split.prompts import PromptFormat
from openai_stub import StubServer

PROMPTS = ["How was your day?", "Describe the sea.", "What is your favourite food?", "Tell me about Mondays."]
MULTIPLIERS = (-4.0, 0.0, 4.0)


def rule_ratings(text: str) -> dict[str, int]:
    """The stub judge's deterministic ratings of one text (written independently of the package)."""
    words = text.split()
    return {"concept": len(text) % 3, "instruction": 1 + len(words) % 2,
            "fluency": 2 if len(set(words)) * 2 > len(words) else 1}


def stub_rule(rubric: str, text: str) -> str:
    if "[[drop fluency]]" in text and rubric == "fluency":
        return "I cannot say."
    return f"Reasoning.\nRating: {rule_ratings(text)[rubric]}"


def harmonic(values: list[float]) -> float:
    return 0.0 if 0 in values else 3.0 / sum(1.0 / v for v in values)


@pytest.fixture
def server():
    stub = StubServer(rule=stub_rule)
    yield stub
    stub.close()


@pytest.fixture
def updates():
    torch.manual_seed(3)
    return {1: DynamicWeightUpdate.from_vector(torch.randn(32) * 4.0)}


def evaluator_for(model, tokenizer, server, **options) -> GenerationEvaluator:
    judge = OpenAICompatibleJudge("stub-judge", base_url=server.base_url, api_key="k", concurrency=4, timeout=5.0,
                                  max_retries=1, backoff=0.01)
    defaults = dict(multipliers=MULTIPLIERS, settings=GenerationSettings(max_new_tokens=6, batch_size=6),
                    judge=judge, concept="the ocean", dev_fraction=0.5, seed=0, progress=False)
    defaults.update(options)
    return GenerationEvaluator(model, tokenizer, prompt_format=PromptFormat(), **defaults)


def test_end_to_end_with_http_judge(tiny_chat_model, default_tokenizer, server, updates, tmp_path):
    evaluator = evaluator_for(tiny_chat_model, default_tokenizer, server)
    report = evaluator.compare({"vec": updates, "half": {1: updates[1] * 0.5}}, PROMPTS, out_dir=tmp_path, dataset="t")
    assert len(report.rows) == 2 * len(MULTIPLIERS) * len(PROMPTS)
    for row in report.rows:
        text = row["pred"][0]
        expected = rule_ratings(text)
        scores = row["scores"]
        assert [scores[name][0] for name in ("concept", "instruction", "fluency")] == [
            expected["concept"], expected["instruction"], expected["fluency"]]
        assert scores["aggregate"][0] == pytest.approx(harmonic(list(expected.values())))
        assert scores["perplexity"][0] is None or scores["perplexity"][0] > 1.0
        assert set(row) >= {"input", "pred", "multiplier", "method", "split", "reference_response", "complete_output"}
    # generations at m = 0 are the unsteered model's
    unsteered = generate_steered(tiny_chat_model, default_tokenizer, PROMPTS, {}, [0.0],
                                 GenerationSettings(max_new_tokens=6), PromptFormat())
    at_zero = {(r["method"], r["index"]): r["pred"][0] for r in report.rows if r["multiplier"] == 0.0}
    for record in unsteered:
        assert at_zero[("vec", record.prompt_index)] == record.text == at_zero[("half", record.prompt_index)]
    assert any(r["pred"][0] != at_zero[(r["method"], r["index"])] for r in report.rows if r["multiplier"] == 4.0)
    # per-cell means by hand, test prompts only
    labels = dev_test_labels(len(PROMPTS), 0.5, 0)
    for m in MULTIPLIERS:
        texts = [r["pred"][0] for r in report.rows if r["method"] == "vec" and r["multiplier"] == m
                 and labels[r["index"]] == "test"]
        expected_mean = sum(harmonic(list(rule_ratings(t).values())) for t in texts) / len(texts)
        assert report.cells[("vec", m, "test")].scores["aggregate"].mean == pytest.approx(expected_mean)
    # identical questions are asked once: concept and fluency per distinct text, instruction per (prompt, text)
    texts = {r["pred"][0] for r in report.rows}
    assert len(server.requests) == 2 * len(texts) + len({(r["input"], r["pred"][0]) for r in report.rows})
    written = report.write(tmp_path)
    data = json.loads(written["generation_json"].read_text())
    assert set(data["factor_selection"]["aggregate"]) == {"vec", "half"}
    markdown = written["generation_markdown"].read_text()
    assert "m = -4" in markdown and "Factor selection" in markdown
    assert written["generation_plot"].stat().st_size > 1000
    assert (tmp_path / GENERATIONS_FILE).exists() and (tmp_path / "judge_cache.jsonl").exists()


def test_missing_rating_is_counted_not_zero(tiny_chat_model, default_tokenizer, server, updates):
    items = [GenerationItem(0, "test", "Say [[drop fluency]] please."), GenerationItem(1, "test", "Hello there.")]
    evaluator = evaluator_for(tiny_chat_model, default_tokenizer, server, multipliers=(0.0,), perplexity=False)

    def fake_generate(model, tokenizer, prompts, updates, multipliers, settings, prompt_format):
        from easyedit_split.generation import GenerationRecord
        texts = ["waves [[drop fluency]] on the sand", "the sea the sea"]
        return [GenerationRecord(i, p, m, 0, texts[i] if "drop" in p else texts[1], "") for m in multipliers
                for i, p in enumerate(prompts)]

    original = evaluator_module.generate_steered
    evaluator_module.generate_steered = fake_generate
    try:
        report = evaluator.compare({"vec": updates}, items)
    finally:
        evaluator_module.generate_steered = original
    cell = report.cells[("vec", 0.0, "test")]
    assert cell.scores["fluency"].n_missing == 1 and cell.scores["fluency"].n_scored == 1
    assert cell.scores["aggregate"].n_missing == 1
    other = rule_ratings("the sea the sea")
    assert cell.scores["aggregate"].mean == pytest.approx(harmonic(list(other.values())))  # not averaged with a 0
    assert "[1]" in report.markdown()  # the missing count is shown


class Killed(Exception):
    pass


@pytest.mark.slow
def test_killed_run_resumes_without_regenerating_or_reasking(tiny_chat_model, default_tokenizer, server, updates,
                                                             tmp_path):
    settings = GenerationSettings(max_new_tokens=5, batch_size=3, do_sample=True, temperature=1.0, seed=11)
    methods = {"vec": updates}
    reference = evaluator_for(tiny_chat_model, default_tokenizer, server, settings=settings).compare(
        methods, PROMPTS, out_dir=tmp_path / "uninterrupted")
    asked_reference = len(server.requests)

    generated: list[tuple[str, float]] = []
    original = evaluator_module.generate_steered

    def counting(model, tokenizer, prompts, updates, multipliers, settings, prompt_format):
        if len(generated) >= 2 * len(MULTIPLIERS) and not resumed:
            raise Killed("killed after two chunks")
        generated.extend((p, m) for p in prompts for m in multipliers)
        return original(model, tokenizer, prompts, updates, multipliers, settings, prompt_format)

    resumed = False
    evaluator_module.generate_steered = counting
    try:
        out = tmp_path / "killed"
        with pytest.raises(Killed):
            evaluator_for(tiny_chat_model, default_tokenizer, server, settings=settings).compare(methods, PROMPTS, out_dir=out)
        before = len(generated)
        assert len((out / GENERATIONS_FILE).read_text().splitlines()) == before == 2 * len(MULTIPLIERS)
        resumed = True
        requests_before = len(server.requests)
        report = evaluator_for(tiny_chat_model, default_tokenizer, server, settings=settings).compare(
            methods, PROMPTS, out_dir=out)
    finally:
        evaluator_module.generate_steered = original
    assert len(generated) == len(PROMPTS) * len(MULTIPLIERS)  # every (prompt, m) generated exactly once
    assert len(set(generated)) == len(generated)
    strip = lambda rows: [{k: v for k, v in row.items()} for row in rows]
    assert strip(report.rows) == strip(reference.rows)  # resumed results equal the uninterrupted run's
    assert len(server.requests) - requests_before == asked_reference  # each question asked once in this directory
    # killed while judging: the cache keeps the answers that arrived; only the rest are asked again
    cache = out / "judge_cache.jsonl"
    lines = cache.read_text().splitlines(keepends=True)
    cache.write_text("".join(lines[:-5]) + lines[-5][:10])
    requests_before = len(server.requests)
    evaluator_module.generate_steered = counting
    try:
        again = evaluator_for(tiny_chat_model, default_tokenizer, server, settings=settings).compare(
            methods, PROMPTS, out_dir=out)
    finally:
        evaluator_module.generate_steered = original
    assert len(generated) == len(PROMPTS) * len(MULTIPLIERS)  # nothing generated again
    assert len(server.requests) - requests_before == 5
    assert again.rows == report.rows


def test_truncated_last_line_is_dropped_and_regenerated(tiny_chat_model, default_tokenizer, server, updates, tmp_path):
    evaluator = evaluator_for(tiny_chat_model, default_tokenizer, server, judge=None)
    first = evaluator.compare({"vec": updates}, PROMPTS, out_dir=tmp_path)
    path = tmp_path / GENERATIONS_FILE
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-1]) + lines[-1][:20])  # a write cut short by a kill
    again = evaluator.compare({"vec": updates}, PROMPTS, out_dir=tmp_path)
    assert again.rows == first.rows
    assert len(path.read_text().splitlines()) == len(lines)


def test_resume_refuses_other_settings_or_interventions(tiny_chat_model, default_tokenizer, server, updates, tmp_path):
    evaluator_for(tiny_chat_model, default_tokenizer, server, judge=None).compare({"vec": updates}, PROMPTS, out_dir=tmp_path)
    with pytest.raises(GenerationRunError, match="settings"):
        evaluator_for(tiny_chat_model, default_tokenizer, server, judge=None,
                      settings=GenerationSettings(max_new_tokens=7, batch_size=6)).compare({"vec": updates}, PROMPTS,
                                                                                         out_dir=tmp_path)
    with pytest.raises(GenerationRunError, match="other interventions"):
        evaluator_for(tiny_chat_model, default_tokenizer, server, judge=None).compare(
            {"vec": {1: updates[1] * 2.0}}, PROMPTS, out_dir=tmp_path)


def _row(method, m, index, split, aggregate, answer="absent"):
    scores = {"aggregate": [aggregate]}
    if answer != "absent":
        scores["answer_matches"] = [answer]
    return {"method": method, "multiplier": m, "index": index, "split": split, "input": "q", "pred": ["t"],
            "scores": scores}


def test_factor_selection_on_dev_reports_test_by_hand():
    rows = []
    # method a: dev means m=1 -> (1.0 + 2.0)/2 = 1.5, m=2 -> 1.0 (one missing), m=4 -> 0.5;
    #           test means m=1 -> 0.4, m=2 -> 1.2, m=4 -> 2.0 (test would pick 4: it must not).
    for m, dev, test in ((1.0, [1.0, 2.0], [0.4, 0.4]), (2.0, [1.0, None], [1.2, 1.2]), (4.0, [0.5, 0.5], [2.0, 2.0])):
        rows += [_row("a", m, i, "dev", v) for i, v in enumerate(dev)]
        rows += [_row("a", m, 10 + i, "test", v) for i, v in enumerate(test)]
    # method b: dev ties at m=-2 and m=2 (1.0): the smaller |m| tie-break then the smaller m -> -2
    for m, dev, test in ((-2.0, [1.0], [0.3]), (2.0, [1.0], [0.9]), (4.0, [0.0], [1.8])):
        rows += [_row("b", m, 0, "dev", dev[0]), _row("b", m, 10, "test", test[0])]
    report = GenerationReport(rows, ["a", "b"])
    chosen = report.choices["aggregate"]
    assert chosen["a"].multiplier == 1.0 and chosen["a"].dev.mean == pytest.approx(1.5)
    assert chosen["a"].test.mean == pytest.approx(0.4)
    assert report.cells[("a", 2.0, "dev")].scores["aggregate"].n_missing == 1
    assert chosen["b"].multiplier == -2.0 and chosen["b"].test.mean == pytest.approx(0.3)


def test_answer_accuracy_selection_and_no_dev_note():
    rows = [_row("a", m, i, split, 1.0, answer) for m, answers in ((0.0, [False, None]), (2.0, [True, True]))
            for i, (split, answer) in enumerate(zip(("dev", "test"), answers))]
    report = GenerationReport(rows, ["a"])
    choice = report.choices["answer_matching_rate"]["a"]
    assert choice.multiplier == 2.0 and choice.test.mean == 1.0
    assert report.cells[("a", 0.0, "test")].answers["n_unparsed"] == 1
    assert report.cells[("a", 0.0, "test")].answers["matching_rate"] == 0.0  # unparsed does not pick the behaviour
    only_test = GenerationReport([dict(r, split="test") for r in rows], ["a"])
    assert only_test.choices == {} and "no dev prompts" in only_test.selection_notes[0]


def test_items_from_easyedit_formats_keep_answers():
    items = load_generation_items("tests/fixtures/data/psychopathy_sample.jsonl", dev_fraction=0.5)
    assert [i.split for i in items].count("dev") == 2 and len(items) == 4
    assert {(i.matching, i.not_matching) for i in items} == {(" Yes", " No"), (" No", " Yes")}
    generation = load_generation_items("tests/fixtures/data/generation_sample.jsonl", dev_fraction=0.0)
    assert [i.input for i in generation] == ["How was your day?", "Describe your favorite park."]
    assert all(i.split == "test" and i.matching is None for i in generation)
    ax = load_generation_items("tests/fixtures/data/axbench_sample.parquet", concept_id=1, dev_fraction=0.0)
    assert {i.concept for i in ax} == {"python code"}
    shipped = load_generation_items("sentiment", split="test", dev_split="train", max_items=3)
    assert [i.split for i in shipped] == ["dev"] * 3 + ["test"] * 3 and len({i.index for i in shipped}) == 6


def test_answer_accuracy_scored_on_yes_no_data(tiny_chat_model, default_tokenizer, updates):
    items = load_generation_items("tests/fixtures/data/psychopathy_sample.jsonl", dev_fraction=0.0)
    evaluator = GenerationEvaluator(tiny_chat_model, default_tokenizer, multipliers=(0.0,), progress=False,
                                    perplexity=False)

    def fake_generate(model, tokenizer, prompts, updates, multipliers, settings, prompt_format):
        from easyedit_split.generation import GenerationRecord
        replies = ["Yes, of course.", "**No.**", "I would say no.", "Hmm, hard to say."]
        return [GenerationRecord(i, p, m, 0, replies[i], "") for m in multipliers for i, p in enumerate(prompts)]

    original = evaluator_module.generate_steered
    evaluator_module.generate_steered = fake_generate
    try:
        report = evaluator.compare({"vec": updates}, items)
    finally:
        evaluator_module.generate_steered = original
    # matching: Yes, No, Yes, No -> replies yes (match), no (match), no (other), unparsed
    assert [r["scores"]["answer_matches"][0] for r in report.rows] == [True, True, False, None]
    answers = report.cells[("vec", 0.0, "test")].answers
    assert answers["matching_rate"] == pytest.approx(0.5) and answers["accuracy_parsed"] == pytest.approx(2 / 3)


@pytest.mark.default_model
def test_default_model_generation_eval_with_local_judge(default_model_and_tokenizer, tmp_path):
    from easyedit_split.judging import LocalJudge

    model, tokenizer = default_model_and_tokenizer
    torch.manual_seed(0)
    vector = {15: DynamicWeightUpdate.from_vector(torch.randn(model.config.hidden_size) * 2.0)}
    judge = LocalJudge(model, tokenizer, max_new_tokens=0, force_rating="expected", batch_size=4, model_id="local:default")
    evaluator = GenerationEvaluator(model, tokenizer, multipliers=(0.0, 8.0), judge=judge, concept="the ocean",
                                    settings=GenerationSettings(max_new_tokens=12), progress=False)
    report = evaluator.compare({"rand": vector}, PROMPTS[:2], out_dir=tmp_path)
    unsteered = generate_steered(model, tokenizer, PROMPTS[:2], {}, [0.0], GenerationSettings(max_new_tokens=12),
                                 PromptFormat())
    assert [r["pred"][0] for r in report.rows if r["multiplier"] == 0.0] == [r.text for r in unsteered]
    for row in report.rows:
        for name in ("concept", "instruction", "fluency"):
            assert 0.0 <= row["scores"][name][0] <= 2.0
        assert row["scores"]["perplexity"][0] > 1.0
    assert "Generations side by side" in report.markdown()


@pytest.mark.slow
def test_cli_evaluate_generate_with_http_judge(tiny_chat_model, default_tokenizer, server, updates, tmp_path,
                                               monkeypatch, capsys):
    from easyedit_split.cli import main
    from easyedit_split.steering import SteeringInterventions

    model_dir = tmp_path / "tiny"
    tiny_chat_model.save_pretrained(model_dir)
    default_tokenizer.save_pretrained(model_dir)
    SteeringInterventions(updates).save(tmp_path / "caa_vector")
    monkeypatch.setenv("EASYEDIT_SPLIT_JUDGE_BASE_URL", server.base_url)
    monkeypatch.setenv("EASYEDIT_SPLIT_JUDGE_API_KEY", "k")
    out = tmp_path / "report"
    argv = ["evaluate", str(tmp_path / "caa_vector"), "--dataset", "sentiment", "--multipliers=-2,0,2",
            "--max-examples", "4", "--no-manifold", "--bootstrap", "10", "--no-progress", "--model", str(model_dir),
            "--output-dir", str(out), "--generate", "--judge", "openai:stub", "--concept", "positive sentiment",
            "--max-prompts", "4", "--max-new-tokens", "4", "--no-plots"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "Factor selection" in printed and "Generations side by side" in printed
    data = json.loads((out / "results.json").read_text())
    assert "caa_vector" in data["methods"] and len(data["generation"]["results"]) == 3 * 4
    assert "# Generation-side evaluation" in (out / "report.md").read_text()
    assert (out / "generation_results.csv").read_text().startswith("method,multiplier,split")
    asked = len(server.requests)
    assert main(argv) == 0  # a re-run reads the generations and judge answers from out/generation/
    assert len(server.requests) == asked
    assert main([("bogus" if a == "openai:stub" else a) for a in argv]) == 2
    assert "openai:MODEL or local:MODEL_OR_PATH" in capsys.readouterr().err


def test_judge_evaluator_for_easyedit_results_and_registry(server, tmp_path):
    import types

    from easyedit_split.evaluation import EVALUATORS
    from easyedit_split.integrations.easyedit_judge import judge_results, register_judge_evaluator

    assert EVALUATORS["generation_judge"] is GenerationEvaluator
    results = [{"input": "Describe the sea.", "orig_pred": [], "pred": ["the sea is wide and blue"]},
               {"input": "Hi", "pred": ["waves [[drop fluency]] crash"]}]
    judge = OpenAICompatibleJudge("stub-judge", base_url=server.base_url, api_key="k", max_retries=0, backoff=0.01)
    metrics = judge_results(results, concept="the ocean", judge=judge, cache_path=tmp_path / "c.jsonl", progress=False)
    first = rule_ratings("the sea is wide and blue")
    assert metrics["concept_scores"][0] == first["concept"] and metrics["fluency_scores"] == [first["fluency"], None]
    assert metrics["aggregated_ratings"][1] is None and metrics["n_missing"] == 1  # EasyEdit would have scored it 0
    assert metrics["mean_aggregated_rating"] == pytest.approx(harmonic(list(first.values())))
    with pytest.raises(KeyError, match="record 0: needs 'input' and 'pred'"):
        judge_results([{"prompt": "x"}], concept="c", judge=judge, progress=False)
    package = types.SimpleNamespace(EVALUATORS={"preference_utility": object})
    assert register_judge_evaluator(package) == "generation_judge"
    assert package.EVALUATORS["generation_judge"] is GenerationEvaluator and "preference_utility" in package.EVALUATORS


@pytest.mark.slow
def test_editor_evaluate_with_generate(tiny_chat_model, default_tokenizer, server, updates):
    from easyedit_split.editor import SteerEditor
    from easyedit_split.hparams import CAAHyperParams

    editor = SteerEditor(CAAHyperParams(layers=[1]), model=tiny_chat_model, tokenizer=default_tokenizer)
    judge = OpenAICompatibleJudge("stub-judge", base_url=server.base_url, api_key="k", max_retries=0, backoff=0.01)
    result = editor.evaluate("sentiment", multipliers=[0.0, 2.0], updates=updates, manifold=False, n_bootstrap=10,
                             generate=True, generation_options=dict(judge=judge, concept="joy", progress=False,
                                                                    settings=GenerationSettings(max_new_tokens=3)))
    assert list(result.preference.metrics.multipliers) == [0.0, 2.0]
    assert result.generation.methods == ["caa"] and result.generation.multipliers == [0.0, 2.0]
    assert len(result.generation.rows) == 2 * 40 and "aggregate" in result.generation.choices


@pytest.mark.slow
def test_run_split_evaluate_with_easyedits_judge_flags(tiny_chat_model, default_tokenizer, server, tmp_path,
                                                       monkeypatch):
    import importlib.util
    from pathlib import Path

    examples = Path(__file__).resolve().parent.parent / "examples"
    monkeypatch.syspath_prepend(str(examples))
    spec = importlib.util.spec_from_file_location("examples_run_split_w10", examples / "run_split.py")
    run_split = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run_split)
    monkeypatch.setenv("BASE_URL", server.base_url)  # EasyEdit's variables
    monkeypatch.setenv("API_KEY", "k")
    common = ["--dataset", "sentiment", "--method", "caa", "--model_name", "smollm2-135m-instruct",
              "--intervention_method", "vector", "--output-dir", str(tmp_path), "--set", "layers=[2]",
              "--max-examples", "4", "--quiet"]
    assert run_split.main(common + ["--mode", "generate"], model=tiny_chat_model, tokenizer=default_tokenizer) == 0
    argv = common + ["--mode", "evaluate", "--multipliers", "-2", "0", "2", "--no-manifold", "--max-new-tokens", "3",
                     "--eval_methods", "llm", "ppl", "distinctness", "--llm_model", "stub-judge", "--concept", "joy"]
    assert run_split.main(argv, model=tiny_chat_model, tokenizer=default_tokenizer) == 0
    report = tmp_path / "results/smollm2-135m-instruct/sentiment/preference_utility"
    data = json.loads((report / "results.json").read_text())
    rows = data["generation"]["results"]
    assert len(rows) == 3 * 4 and {r["method"] for r in rows} == {"caa"}  # --multipliers, 4 test prompts
    assert all(r["scores"]["aggregate"][0] is not None and r["scores"]["perplexity"] for r in rows)
    assert server.bodies[0]["model"] == "stub-judge"
    assert run_split.main(argv[:-8] + ["--eval_methods", "llm"], model=tiny_chat_model, tokenizer=default_tokenizer) == 1


@pytest.mark.slow
def test_main_job_generation_step(tiny_chat_model, default_tokenizer, server, updates, tmp_path):
    from easyedit_split.data import load_dataset
    from easyedit_split.demo import run_demo_generation

    judge = OpenAICompatibleJudge("stub-judge", base_url=server.base_url, api_key="k", max_retries=0, backoff=0.01)
    test_pairs = load_dataset("sentiment", split="test")
    report = run_demo_generation(tiny_chat_model, default_tokenizer, PromptFormat(),
                                 {"caa": updates, "sft": {1: updates[1] * 0.5}, "split": {1: updates[1] * -1.0}},
                                 test_pairs, out_dir=tmp_path, max_new_tokens=3, judge=judge, progress=False)
    assert report.methods == ["caa", "sft", "split"] and report.multipliers == [0.0, 2.0, 4.0, 8.0]
    assert report.context["n_prompts"] == {"dev": 2, "test": 2}
    assert set(report.choices["aggregate"]) == {"caa", "sft", "split"}
    assert all(r["scores"]["perplexity"] and r["scores"]["distinct_1"] for r in report.rows)
    again = run_demo_generation(tiny_chat_model, default_tokenizer, PromptFormat(), {"caa": {1: updates[1] * 2.0}},
                                test_pairs, out_dir=tmp_path, max_new_tokens=3, judge=judge, progress=False)  # retrained: no error
    assert again.methods == ["caa"]


def test_judge_without_concept_fails_before_generating(tiny_chat_model, default_tokenizer, server, updates, tmp_path):
    evaluator = evaluator_for(tiny_chat_model, default_tokenizer, server, concept=None)
    with pytest.raises(ValueError, match="concept description"):
        evaluator.compare({"vec": updates}, PROMPTS, out_dir=tmp_path)
    assert not (tmp_path / GENERATIONS_FILE).exists()
