"""generation_eval/report.py: what the report says about its judge (prompts, rules, the small local judge)."""
from __future__ import annotations

from easyedit_split.generation_eval.report import GenerationReport


def _row(multiplier: float, split: str) -> dict:
    return {"method": "split", "multiplier": multiplier, "split": split, "index": 0, "input": "Hi.", "pred": ["Hello."],
            "scores": {"aggregate": [1.0], "concept": [1.0], "instruction": [1.0], "fluency": [1.0]}}


def _report(judge: str, **context) -> str:
    rows = [_row(m, split) for m in (0.0, 1.0) for split in ("dev", "test")]
    return GenerationReport(rows, ["split"], {"judge": judge, "rubric_version": "v", **context}).markdown()


def test_report_names_the_prompts_and_scoring_rules():
    text = _report("openai:gpt-4o", judge_prompts="easyedit", judge_rules="easyedit", rubric_version="easyedit-prompts-ab")
    assert "prompts easyedit: easyedit-prompts-ab; scoring rules easyedit" in text
    assert "prompts package: v; scoring rules package" in _report("openai:gpt-4o")
    assert "Judge warning" not in text


def test_small_local_judge_gets_a_warning_beside_its_table():
    text = _report("local:HuggingFaceTB/SmolLM2-135M-Instruct:forced-expected")
    assert "**Judge warning:**" in text and "concept and instruction ratings tell nothing" in text
    assert "Judge warning" not in _report("local:Qwen/Qwen2.5-7B-Instruct")
