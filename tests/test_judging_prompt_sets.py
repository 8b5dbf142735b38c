"""Judge prompt sets and scoring rules (issue 22 item 6): EasyEdit's templates read at run time from an
installed checkout, EasyEdit's scoring rules, and parity with EasyEdit's own `_llm_evaluate` on a stub server.

The snapshot of EasyEdit is copied to a temporary directory (never edited in place); only its
`steer/evaluate` package is copied, under an empty `steer/__init__.py`, so importing it does not pull
in EasyEdit's model code.
"""
from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import pytest

from easyedit_split.judging import JudgeItem, OpenAICompatibleJudge, rate_items
from easyedit_split.judging.prompt_sets import (
    PromptSetError, ScoringRules, get_scoring_rules, load_prompt_set,
)
from easyedit_split.judging.rubrics import RUBRIC_VERSION
from easyedit_host import easyedit_cannot_run
from openai_stub import StubServer

SNAPSHOT = Path("/work/shared/easyedit-14cea82")
needs_snapshot = pytest.mark.skipif(not (SNAPSHOT / "steer/evaluate/prompt_templates.py").is_file(),
                                    reason="EasyEdit snapshot not available")


@pytest.fixture
def easyedit_on_path(tmp_path, monkeypatch):
    """A temporary copy of EasyEdit's steer/evaluate on sys.path; steer modules forgotten afterwards."""
    root = tmp_path / "EasyEdit"
    shutil.copytree(SNAPSHOT / "steer/evaluate", root / "steer/evaluate")
    (root / "steer/__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(root))
    for name in [n for n in sys.modules if n == "steer" or n.startswith("steer.")]:
        monkeypatch.delitem(sys.modules, name)
    yield root
    for name in [n for n in sys.modules if n == "steer" or n.startswith("steer.")]:
        del sys.modules[name]


def _snapshot_templates() -> dict[str, str]:
    """The three template strings, read from the snapshot's source by a separate route (ast, not import)."""
    import ast

    tree = ast.parse((SNAPSHOT / "steer/evaluate/prompt_templates.py").read_text())
    return {node.targets[0].id: node.value.value for node in tree.body
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)}


@needs_snapshot
def test_easyedit_templates_are_read_from_the_installed_checkout(easyedit_on_path):
    rubrics, version = load_prompt_set("easyedit")
    texts = _snapshot_templates()
    assert version.startswith("easyedit-prompts-") and version != RUBRIC_VERSION
    # rendered exactly as EasyEdit's _llm_evaluate renders them: format(...).strip()
    assert rubrics["concept"].render(concept="the sea", generation="Waves.") == \
        texts["CONCEPT_RELEVANCE_TEMPLATE"].format(concept="the sea", sentence="Waves.").strip()
    assert rubrics["instruction"].render(instruction="Describe it.", generation="Waves.") == \
        texts["INSTRUCTION_RELEVANCE_TEMPLATE"].format(instruction="Describe it.", sentence="Waves.").strip()
    assert rubrics["fluency"].render(generation="Waves.") == texts["FLUENCY_TEMPLATE"].format(sentence="Waves.").strip()
    # a changed upstream text changes the version (so cached answers of the old text are not reused)
    path = easyedit_on_path / "steer/evaluate/prompt_templates.py"
    path.write_text(path.read_text().replace("impartial judge", "fair judge", 1))
    assert load_prompt_set("easyedit")[1] != version


def test_missing_easyedit_and_axbench_are_clear_errors(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in ("steer", "axbench") else real(name, *a))
    with pytest.raises(PromptSetError, match=r"--judge-prompts easyedit: the 'steer' package is not installed.*PYTHONPATH"):
        load_prompt_set("easyedit")
    with pytest.raises(PromptSetError, match=r"--judge-prompts axbench: the 'axbench' package is not installed"):
        load_prompt_set("axbench")
    with pytest.raises(ValueError, match="--judge-prompts must be one of package, easyedit, axbench"):
        load_prompt_set("helm")
    with pytest.raises(ValueError, match="--judge-rules must be one of package, easyedit"):
        get_scoring_rules("strict")


def test_scoring_rules_by_hand():
    easy, package = get_scoring_rules("easyedit"), get_scoring_rules("package")
    assert easy == ScoringRules("easyedit", failed_is_zero=True, first_sample_only=True, truncate=True)
    assert [easy.apply(r) for r in (None, 1.5, 2.0, 0.9, 0.0)] == [0.0, 1.0, 2.0, 0.0, 0.0]
    assert [package.apply(r) for r in (None, 1.5, 2.0)] == [None, 1.5, 2.0]


_SENTENCE = re.compile(r"\[Sentence Fragment Start\]\n(.*)\n\[Sentence Fragment End\]", re.DOTALL)


def _easyedit_rule(rubric: str, prompt: str) -> str:
    """Answers for EasyEdit-style prompts: `score:C,I,F` in the sentence; `bad` -> no rating at all."""
    rubric = "concept" if "[Concept Start]" in prompt else "instruction" if "[Instruction Start]" in prompt else "fluency"
    sentence = _SENTENCE.search(prompt).group(1)
    if "bad" in sentence and rubric == "fluency":
        return "I cannot rate this."
    values = dict(zip(("concept", "instruction", "fluency"), re.search(r"score:([\d.]+),([\d.]+),([\d.]+)", sentence).groups()))
    return f"The {rubric} is judged.\nRating: [[{values[rubric]}]]"


@needs_snapshot
@pytest.mark.skipif(easyedit_cannot_run() is not None, reason=str(easyedit_cannot_run()))
@pytest.mark.slow
def test_easyedit_prompts_and_rules_reproduce_easyedit_evaluate(easyedit_on_path, monkeypatch):
    """Same generations, same stub judge: the package's scores equal EasyEdit's own `_llm_evaluate`."""
    server = StubServer(rule=_easyedit_rule)
    try:
        results = [  # EasyEdit's results records: only pred[0] is judged by EasyEdit
            {"input": "Describe the sea.", "pred": ["score:2,1,2 waves", "score:0,0,0 ignored"]},
            {"input": "Name a fruit.", "pred": ["score:1.5,2,2 apple"]},           # truncated to 1
            {"input": "Say hi.", "pred": ["score:2,2,2 bad", "score:2,2,2 fine"]},  # fluency fails -> 0
            {"input": "Count.", "pred": ["score:1,1,1 one two"]},
        ]
        concept = "the ocean"
        import importlib

        evaluate = importlib.import_module("steer.evaluate.evaluate")
        monkeypatch.setattr(evaluate, "API_KEY", "test-key")
        monkeypatch.setattr(evaluate, "BASE_URL", server.base_url)
        monkeypatch.setattr(evaluate.asyncio, "sleep", _no_sleep)  # EasyEdit's retry backoff, not its logic
        theirs = evaluate.Evaluator(llm_model="stub-judge", save_results=False)._llm_evaluate(concept, results)

        judge = OpenAICompatibleJudge("stub-judge", base_url=server.base_url, api_key="test-key", concurrency=4,
                                      timeout=5.0, max_retries=1, backoff=0.01)
        rules = get_scoring_rules("easyedit")
        assert rules.first_sample_only
        items = [JudgeItem(generation=r["pred"][0], instruction=r["input"], concept=concept) for r in results]
        ours = rate_items(judge, items, progress=False, prompts="easyedit", rules="easyedit")
    finally:
        server.close()
    for name in ("concept", "instruction", "fluency"):
        assert [o.ratings[name] for o in ours] == [float(v) for v in theirs[f"{name}_scores"]], name
    assert [o.aggregate for o in ours] == pytest.approx(theirs["aggregated_ratings"])
    assert theirs["fluency_scores"][2] == 0 and theirs["concept_scores"][1] == 1   # the rules were exercised
    assert ours[0].to_dict()["scoring_rules"] == "easyedit"
    assert ours[0].to_dict()["rubric_version"].startswith("easyedit-prompts-")


async def _no_sleep(*_args, **_kwargs) -> None:
    return None
