"""The main job's generation-side step: steered generations of CAA, SFT and SPLIT, scored within the demo's budget.

A few held-out prompts (half choose each method's factor, half report it), short greedy generations,
lexical scores (perplexity under the unsteered model, distinct-n) and the default model itself as a
local judge with ``force_rating="expected"`` and no justification (one forward pass per question).
A 135M judge is a coarse signal (docs/judging.md): its fluency trend is usable, its concept and
instruction ratings are not; pass ``judge="openai:MODEL"`` for real ratings.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

from .data import load_dataset
from .evaluation.generation_eval import GENERATIONS_FILE, RUN_FILE, GenerationEvaluator
from .evaluation.generation_items import make_items
from .evaluation.generation_report import GenerationReport
from .generation import GenerationSettings
from .judging import LocalJudge

DEMO_GENERATION_MULTIPLIERS = (0.0, 2.0, 4.0, 8.0)
DEMO_GENERATION_PROMPTS = 4
DEMO_GENERATION_TOKENS = 24
DEMO_CONCEPT = "positive sentiment: joy, praise, enthusiasm, warmth"


def run_demo_generation(
    model: Any,
    tokenizer: Any,
    prompt_format: Any,
    methods: Mapping[str, Any],
    dataset: str = "sentiment",
    out_dir: Optional[Union[str, Path]] = None,
    multipliers: Sequence[float] = DEMO_GENERATION_MULTIPLIERS,
    n_prompts: int = DEMO_GENERATION_PROMPTS,
    max_new_tokens: int = DEMO_GENERATION_TOKENS,
    judge: Any = None,
    progress: bool = True,
) -> GenerationReport:
    """Generate and score the first `n_prompts` held-out prompts (half dev, half test) for every method.

    `judge` None uses `model` itself as the local judge (expected digit, no justification).
    `out_dir` keeps the files (generations.jsonl, judge_cache.jsonl); the generations are made afresh each
    run (the vectors are retrained), judge answers to texts seen before come from the cache.
    """
    if out_dir is not None:  # the demo retrains its vectors every run: generate afresh, keep the judge's answer cache
        for name in (GENERATIONS_FILE, RUN_FILE):
            (Path(out_dir) / name).unlink(missing_ok=True)
    pairs = load_dataset(dataset, split="test")[:n_prompts]
    items = make_items(pairs, dev_fraction=0.5, seed=0)
    if judge is None:
        judge = LocalJudge(model, tokenizer, max_new_tokens=0, force_rating="expected", batch_size=8,
                           model_id="local:default-model")
    evaluator = GenerationEvaluator(model, tokenizer, prompt_format=prompt_format, multipliers=multipliers,
                                    settings=GenerationSettings(max_new_tokens=max_new_tokens, batch_size=16),
                                    judge=judge, concept=DEMO_CONCEPT, progress=progress)
    return evaluator.compare(methods, items, out_dir=out_dir, dataset=f"{dataset} (test, first {len(items)} prompts)")
