"""Generation-side evaluation: LLM-judge ratings, answer accuracy and lexical metrics of steered generations.

    from easyedit_split.judging import JudgeItem, JudgeCache, make_judge, rate_items
    judge = make_judge("openai:gpt-4o-mini")           # or "local:smollm2-135m-instruct"
    rated = rate_items(judge, [JudgeItem("The sea was calm.", "Describe a morning.", "the ocean")],
                       cache=JudgeCache("out/judge_cache.jsonl"))
    rated[0].ratings, rated[0].aggregate

Modules: `rubrics` (prompt texts, RUBRIC_VERSION), `parsing` (Rating: line), `backends` (HTTP and local
judges), `cache` (JSONL answer cache), `rating` (ask through the cache), `scoring` (harmonic mean,
per-multiplier means, factor selection on a dev split), `answers` (Yes/No and A/B accuracy),
`lexical` (distinct-n, perplexity under the unsteered model). Nothing heavy is imported here.
"""
from .answers import AnswerAccuracy, answer_accuracy, answer_matches, parse_answer, reference_label
from .backends import (
    BatchJudgeBackend, JudgeBackend, JudgeConfigError, JudgeRequestError, LocalJudge, OpenAICompatibleJudge, make_judge,
)
from .cache import JudgeCache, JudgeCacheError, cache_key
from .parsing import parse_rating
from .rating import ItemRatings, JudgeItem, RubricRating, count_missing, rate_items, rate_items_async
from .rubrics import RATING_MAX, RATING_MIN, RUBRIC_NAMES, RUBRIC_VERSION, judge_prompts
from .scoring import (
    FactorChoice, ScoreSummary, ScoreTable, harmonic_mean_rating, mean_by_multiplier, select_factor, select_factors,
    summarize,
)

__all__ = [
    "AnswerAccuracy", "answer_accuracy", "answer_matches", "parse_answer", "reference_label",
    "BatchJudgeBackend", "JudgeBackend", "JudgeConfigError", "JudgeRequestError", "LocalJudge",
    "OpenAICompatibleJudge", "make_judge", "JudgeCache", "JudgeCacheError", "cache_key", "parse_rating",
    "ItemRatings", "JudgeItem", "RubricRating", "count_missing", "rate_items", "rate_items_async", "RATING_MAX",
    "RATING_MIN", "RUBRIC_NAMES", "RUBRIC_VERSION", "judge_prompts", "FactorChoice", "ScoreSummary", "ScoreTable",
    "harmonic_mean_rating", "mean_by_multiplier", "select_factor", "select_factors", "summarize",
]
