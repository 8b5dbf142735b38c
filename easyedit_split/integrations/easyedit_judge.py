"""The judge evaluator for EasyEdit: its results files scored by this package's judges, and its registry entry.

    from easyedit_split.integrations.easyedit_judge import judge_results
    metrics = judge_results(json.load(open("generation/.../psychopathy_results.json")), concept="psychopathy",
                            judge="openai:gpt-4o-mini", cache_path="judge_cache.jsonl")

`judge_results` reads EasyEdit's ``<data>_results.json`` records (``input``, ``pred``) and returns the
keys EasyEdit's ``llm`` evaluation method returns (``concept_scores``, ``instruction_scores``,
``fluency_scores``, ``aggregated_ratings``, ``mean_aggregated_rating``), with one difference: a rating
the judge did not give is None and counted in ``n_missing``, never 0. `register_judge_evaluator`
puts `GenerationEvaluator` into ``steer.evaluate.EVALUATORS`` next to the preference-utility one;
`integrations.easyedit.register_with_easyedit` calls it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

JUDGE_EVALUATOR_NAME = "generation_judge"


def judge_results(results: Sequence[Mapping[str, Any]], concept: str, judge: Union[str, Any] = "openai:gpt-4o",
                  cache_path: Optional[Union[str, Path]] = None, progress: bool = True,
                  **judge_options: Any) -> dict[str, Any]:
    """Judge the first prediction of every EasyEdit results record (as EasyEdit's ``llm`` method does)."""
    from ..generation_eval.score_means import summarize
    from ..judging import JudgeCache, JudgeItem, make_judge, rate_items

    backend = make_judge(judge, **judge_options) if isinstance(judge, str) else judge
    items = []
    for index, record in enumerate(results):
        if "input" not in record or "pred" not in record:
            raise KeyError(f"results record {index}: needs 'input' and 'pred' (EasyEdit's results layout), "
                           f"has {sorted(record)}")
        pred = record["pred"]
        text = pred[0] if isinstance(pred, list) and pred else str(pred or "")
        items.append(JudgeItem(generation=text, instruction=str(record["input"]), concept=concept))
    rated = rate_items(backend, items, cache=JudgeCache(cache_path) if cache_path else None, progress=progress)
    aggregates = [r.aggregate for r in rated]
    summary = summarize(aggregates)
    return {
        "concept": concept, "judge": backend.model_id,
        "concept_scores": [r.ratings.get("concept") for r in rated],
        "instruction_scores": [r.ratings.get("instruction") for r in rated],
        "fluency_scores": [r.ratings.get("fluency") for r in rated],
        "aggregated_ratings": aggregates, "mean_aggregated_rating": summary.mean,
        "n_scored": summary.n_scored, "n_missing": summary.n_missing,
    }


def add_evaluator(evaluate_package: Any, name: str, evaluator: type) -> None:
    """Put `evaluator` in ``evaluate_package.EVALUATORS[name]`` (the dict created if absent) and expose it
    as an attribute of the package under its class name, as EasyEdit's own evaluators are."""
    registry = getattr(evaluate_package, "EVALUATORS", None)
    if not isinstance(registry, dict):
        registry = {}
        evaluate_package.EVALUATORS = registry
    registry[name] = evaluator
    setattr(evaluate_package, evaluator.__name__, evaluator)


def register_judge_evaluator(evaluate_package: Any) -> str:
    """Add `GenerationEvaluator` to ``evaluate_package.EVALUATORS`` (created if absent); returns its name."""
    from ..generation_eval.evaluator import GenerationEvaluator

    add_evaluator(evaluate_package, JUDGE_EVALUATOR_NAME, GenerationEvaluator)
    evaluate_package.judge_results = judge_results
    return JUDGE_EVALUATOR_NAME
