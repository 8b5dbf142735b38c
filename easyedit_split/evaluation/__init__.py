"""The preference-utility analysis (arXiv 2602.02343): sweep NLLs, statistics, fits, manifold probe, report.

    from easyedit_split.evaluation import PreferenceUtilityEvaluator
    report = PreferenceUtilityEvaluator(model, tokenizer).compare({"caa": "out/caa_vector"}, pairs, "report/")

Only the preference-utility side lives here; the generation-side evaluation (steered generations
scored by judges, answer accuracy and text metrics; factor selection) is `easyedit_split.generation_eval`.
"""
from .. import registry
from .config import EvaluatorConfig
from .fits import CurveFit, fit_and_summarize, fit_preference, fit_utility, preference_curve, utility_curve, validity_decay
from .manifold import ManifoldOptions, ManifoldProbe, ManifoldResult
from .metrics import SweepMetrics, compute_metrics, log1mexp, preference_odds, utility_odds
from .preference_utility import MethodResult, PreferenceUtilityEvaluator
from .report import EvaluationReport
from .sweep_nll import EncodedPair, PairScores, encode_pairs, score_encoded_pairs, score_pairs

EVALUATORS = {name: registry.get_evaluator(name) for name in registry.EVALUATORS}
"""Evaluator name -> class, read from the package registry (EasyEdit's `steer.evaluate` gets this mapping)."""

__all__ = [
    "EVALUATORS", "EvaluatorConfig", "PreferenceUtilityEvaluator", "MethodResult", "EvaluationReport",
    "ManifoldOptions", "ManifoldProbe", "ManifoldResult", "SweepMetrics", "compute_metrics", "log1mexp",
    "preference_odds", "utility_odds", "CurveFit", "fit_and_summarize", "fit_preference", "fit_utility",
    "preference_curve", "utility_curve", "validity_decay", "EncodedPair", "PairScores", "encode_pairs",
    "score_encoded_pairs", "score_pairs",
]
