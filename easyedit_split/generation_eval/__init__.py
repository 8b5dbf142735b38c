"""Generation-side evaluation: steered generations over a sweep, scored by judges, answer accuracy and text metrics.

    from easyedit_split.generation_eval import GenerationEvaluator
    evaluator = GenerationEvaluator(model, tokenizer, multipliers=[0, 2, 4], judge="openai:gpt-4o-mini",
                                    concept="positive sentiment")
    report = evaluator.compare({"caa": caa_updates, "split": "vectors/split_vector"}, items, out_dir="report/")

Modules: `evaluator` (generate, score, resume), `items` (prompts labelled dev/test), `report` (tables,
plot, samples, files), `answer_accuracy` (Yes/No and A/B answers), `text_metrics` (perplexity,
distinct-n), `score_means` (means with missing counted), `factor_selection` (m chosen on dev, reported
on test; also for preference accuracy). The judges themselves are `easyedit_split.judging`.
"""
from .answer_accuracy import AnswerAccuracy, answer_accuracy, answer_matches, parse_answer, reference_label
from .evaluator import GenerationAndPreference, GenerationEvalConfig, GenerationEvaluator, GenerationRunError
from .factor_selection import FactorChoice, select_factor, select_factors, select_preference_accuracy
from .items import GenerationItem, load_generation_items, make_items
from .report import GenerationReport
from .score_means import ScoreSummary, ScoreTable, mean_by_multiplier, summarize
from .text_metrics import distinct_1_2_3, distinct_n, perplexities, perplexity

__all__ = [
    "GenerationEvaluator", "GenerationEvalConfig", "GenerationRunError", "GenerationAndPreference",
    "GenerationItem", "load_generation_items", "make_items", "GenerationReport",
    "AnswerAccuracy", "answer_accuracy", "answer_matches", "parse_answer", "reference_label",
    "distinct_1_2_3", "distinct_n", "perplexities", "perplexity",
    "ScoreSummary", "ScoreTable", "mean_by_multiplier", "summarize",
    "FactorChoice", "select_factor", "select_factors", "select_preference_accuracy",
]
