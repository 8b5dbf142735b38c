"""Evaluator end to end on a tiny model: report files written and parseable; the evaluate CLI."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from easyedit_split.evaluation import EVALUATORS, PreferenceUtilityEvaluator
from easyedit_split.evaluation.sweep_nll import EncodedPair
from easyedit_split.interventions import DynamicWeightUpdate

from conftest import build_tiny_model

WORDS = ("how was the film book meal trip day it great awful lovely dull i loved hated good bad "
         "wonderful boring fun terrible nice sad happy").split()


def _pairs(n=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    ids = lambda k: tuple(torch.randint(3, 97, (k,), generator=generator).tolist())  # noqa: E731
    return [EncodedPair(ids(5), ids(3), ids(4)) for _ in range(n)]


def _vector(scale=1.0, seed=1):
    torch.manual_seed(seed)
    return DynamicWeightUpdate.from_vector(torch.randn(32) * scale)


def test_registry_exposes_the_evaluator():
    assert EVALUATORS["preference_utility"] is PreferenceUtilityEvaluator


def test_compare_writes_parseable_report(tmp_path):
    model = build_tiny_model("qwen2")
    evaluator = PreferenceUtilityEvaluator(model, None, multipliers=[-2, -1, 0, 1, 2], n_bootstrap=50,
                                           progress=False)
    report = evaluator.compare({"a": {1: _vector()}, "b": {2: _vector(0.5, seed=2)}}, _pairs(), tmp_path,
                               dataset="synthetic")
    data = json.loads((tmp_path / "results.json").read_text())
    assert set(data["methods"]) == {"a", "b"}
    scored = data["scored"]
    assert scored["nll_mode"] == "sequence" and scored["n_examples"] == 8 and "join_rule" in scored
    method = data["methods"]["a"]
    assert len(method["metrics"]["preference"]["mean"]) == 5
    assert {"preference", "utility", "summaries"} <= set(method["fits"])
    assert method["manifold"]["layers"][0] == 1
    with open(tmp_path / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 10 and {r["method"] for r in rows} == {"a", "b"}
    for name in ("preference_utility.png", "frontier.png", "manifold.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (tmp_path / "report.md").read_text()
    assert "| a |" in table and "| b |" in table
    assert not list(tmp_path.glob(".*.tmp")) and not list(tmp_path.glob(".*.png"))
    # m = 0 is the unsteered model for every method
    zero = report.results[0].metrics.multipliers.tolist().index(0.0)
    np.testing.assert_allclose(report.results[0].scores.matching_sum[zero], report.results[1].scores.matching_sum[zero],
                               atol=1e-5)


def _save_tiny_setup(tmp_path):
    """A tiny Llama with a word-level tokenizer, a saved vector and a small dataset file."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from easyedit_split.storage.units import save_interventions

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "[UNK]": 3, **{w: i + 4 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                        unk_token="[UNK]")
    model_dir = tmp_path / "model"
    build_tiny_model("llama").save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    save_interventions(tmp_path / "caa_vector", {1: _vector()}, {"alg_name": "caa"})
    rows = [{"question": "how was the film", "matching": "it was great i loved it", "not_matching": "it was awful i hated it"},
            {"question": "how was the trip", "matching": "lovely and fun", "not_matching": "dull and sad"},
            {"question": "how was the meal", "matching": "good", "not_matching": "bad and boring"}]
    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return model_dir, data


def test_cli_evaluates_saved_directories(tmp_path, capsys):
    from easyedit_split.cli import main

    model_dir, data = _save_tiny_setup(tmp_path)
    out = tmp_path / "report"
    code = main(["evaluate", str(tmp_path / "caa_vector"), "--vectors", f"half={tmp_path / 'caa_vector'}", "--dataset", str(data),
                 "--model", str(model_dir), "--multipliers=-2:2:1", "--out", str(out), "--bootstrap", "20",
                 "--no-progress", "--max-examples", "2"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| caa_vector |" in printed and "| half |" in printed
    data = json.loads((out / "results.json").read_text())
    assert data["scored"]["n_examples"] == 2
    assert data["scored"]["chat_template"] is False
    assert data["methods"]["caa_vector"]["metrics"]["multipliers"] == [-2.0, -1.0, 0.0, 1.0, 2.0]


def test_cli_rejects_bad_arguments(tmp_path, capsys):
    from easyedit_split.cli import main
    from easyedit_split.multipliers import parse_multipliers

    assert parse_multipliers(["-1:1:0.5"]) == [-1.0, -0.5, 0.0, 0.5, 1.0]
    assert parse_multipliers(["4,0", "-4"]) == [-4.0, 0.0, 4.0]
    with pytest.raises(ValueError, match="start:stop:step"):
        parse_multipliers(["1:2"])
    assert main(["evaluate", "--dataset", "sentiment"]) == 2
    assert "nothing to evaluate" in capsys.readouterr().err


# ---------------------------------------------------------------- report files from hand-built results (no model)
def _hand_result(name, multipliers, pref, util):
    import types

    from easyedit_split.evaluation.fits import fit_and_summarize
    from easyedit_split.evaluation.metrics import Statistic

    m, pref, util = (np.asarray(v, float) for v in (multipliers, pref, util))
    stat = lambda v: Statistic(v, np.full(v.size, 0.125), v - 0.25, v + 0.5, np.full(v.size, 10))  # noqa: E731
    metrics = types.SimpleNamespace(multipliers=m, preference=stat(pref), utility=stat(util),
                                    accuracy=np.linspace(0.1, 0.9, m.size), undefined_utility=np.zeros(m.size, int),
                                    matching_nll_mean=np.full(m.size, 1.5), not_matching_nll_mean=np.full(m.size, 2.5))
    fits = fit_and_summarize(m, pref, util)
    return types.SimpleNamespace(name=name, metrics=metrics, fits=fits, manifold=None,
                                 to_dict=lambda: {"fits": fits.to_dict()})


def test_frontier_series_pareto_set_by_hand():
    from easyedit_split.evaluation.report import frontier_series

    # m:        -2    -1    0     1     2     3
    # gain:     -1   -0.5   0     1     3     2     (P - P(0))
    # loss:      1    0.2   0    0.5    2     4     (U(0) - U)
    series = frontier_series("x", [-2, -1, 0, 1, 2, 3], [4, 4.5, 5, 6, 8, 7], [9, 9.8, 10, 9.5, 8, 6])
    np.testing.assert_allclose(series.gain, [-1, -0.5, 0, 1, 3, 2])
    np.testing.assert_allclose(series.loss, [1, 0.2, 0, 0.5, 2, 4])
    # m=0 (no loss), m=1 and m=2 are undominated; m=3 is dominated by m=2, m=-1 and m=-2 by m=0
    assert series.pareto.tolist() == [False, False, True, True, True, False]


def test_frontier_view_clips_and_counts():
    from easyedit_split.evaluation.report import frontier_series, frontier_view

    good = frontier_series("good", [0, 1, 2], [0, 1, 2], [0, -0.5, -1])
    broken = frontier_series("broken", [0, 1, 2, 3], [0, 1, 5, 9], [0, -2, -60, -130])
    view = frontier_view([good, broken], budget=3.0)
    assert view["max_loss"] == 6.0                    # furthest Pareto loss 130, capped at 2 x budget
    assert view["clipped"] == {"good": 0, "broken": 2}  # losses 60 and 130
    assert view["xlim"][0] < 0 < 6.0 < view["xlim"][1]
    assert view["ylim"][1] > 2.0 and view["ylim"][1] < 5.0  # gains of the clipped points do not stretch the axis


@pytest.mark.slow
def test_report_files_carry_the_source_numbers(tmp_path):
    from easyedit_split.evaluation.report import EvaluationReport

    m = np.linspace(-8, 8, 17)
    rng = np.random.default_rng(0)
    decay = (1.0, 20.0, 1.5, -0.5, 10.0, 1.0)
    from easyedit_split.evaluation.fits import preference_curve, utility_curve

    pref = preference_curve(m, 1.0, 0.5, -0.2, *decay) + rng.normal(0, 0.02, m.size)
    util = utility_curve(m, 4.0, -3.0, *decay) + rng.normal(0, 0.02, m.size)
    result = _hand_result("smooth", m, pref, util)
    short = _hand_result("short", [-1, 0, 1], [-1, 0, 2], [-3, -1, -4])   # too few points: not fitted
    EvaluationReport([result, short], {"n_examples": 10}).write(tmp_path)
    with open(tmp_path / "results.csv", newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row["method"] == "smooth"]
    assert [float(r["multiplier"]) for r in rows] == m.tolist()
    assert [float(r["pref_odds_mean"]) for r in rows] == pytest.approx(pref.tolist(), abs=1e-12)
    assert [float(r["util_odds_ci_high"]) for r in rows] == pytest.approx((util + 0.5).tolist(), abs=1e-12)
    text = (tmp_path / "report.md").read_text()
    fit_row = next(line for line in text.splitlines() if line.startswith("| smooth |") and "k=" in line)
    cells = [c.strip() for c in fit_row.strip("|").split("|")]
    assert float(cells[1]) == pytest.approx(result.fits.preference.adjusted_r2, abs=5e-4)
    assert float(cells[2]) == pytest.approx(result.fits.preference.loo_rmse, abs=5e-4)
    assert float(cells[4]) == pytest.approx(result.fits.utility.adjusted_r2, abs=5e-4)
    assert cells[3] == "full, k=9" and cells[6] == "full, k=8"
    summary_row = next(line for line in text.splitlines() if line.startswith("| smooth |") and "k=" not in line
                       and "±" not in line)
    area = float(summary_row.strip("|").split("|")[4].split()[0])
    assert area == pytest.approx(result.fits.headline.frontier_area, abs=5e-3)
    short_row = next(line for line in text.splitlines() if line.startswith("| short |") and "needs" in line)
    assert "3 points" in short_row and "interpolation*" in short_row
    assert "\\* short:" in text and "not fitted" in text
    assert (tmp_path / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_summary_reports_preference_accuracy_at_fixed_multipliers_never_the_max():
    from easyedit_split.evaluation.report import EvaluationReport, accuracy_multipliers

    m = [-4, -2, 0, 2, 4]
    result = _hand_result("x", m, [1, 2, 3, 4, 3.5], [0, 0, 0, -0.5, -1])
    result.metrics.preference_accuracy = np.array([0.10, 0.20, 0.30, 0.97, 0.40])  # the max (0.97) is at m = 2
    assert accuracy_multipliers(m) == [0.0, -4.0, 4.0]
    assert accuracy_multipliers(m, chosen=[2]) == [2.0]  # e.g. chosen on a dev split
    text = EvaluationReport([result], {"dataset": "d"}).markdown_table()
    summary = next(line for line in text.splitlines() if line.startswith("| x |") and "@ m=" in line)
    assert "0.30 @ m=0" in summary and "0.10 @ m=-4" in summary and "0.40 @ m=4" in summary
    assert "0.97" not in summary
    chosen = EvaluationReport([result], {"dataset": "d", "accuracy_at": [2.0]}).markdown_table()
    assert "0.97 @ m=2" in chosen
    csv_header = EvaluationReport([result], {}).csv_text().splitlines()[0]
    assert "preference_accuracy" in csv_header.split(",") and "accuracy" not in csv_header.split(",")


def test_metrics_json_has_the_new_key_and_the_old_one():
    from easyedit_split.evaluation.metrics import compute_metrics
    from easyedit_split.evaluation.sweep_nll import PairScores

    scores = PairScores(np.array([0.0]), np.array([[1.0, 3.0]]), np.array([[2.0, 2.0]]), np.ones(2), np.ones(2), "sequence")
    metrics = compute_metrics(scores, n_bootstrap=0)
    data = metrics.to_dict()
    assert data["preference_accuracy"] == [0.5] and data["accuracy"] == [0.5]  # pair 0 prefers matching, pair 1 not
    assert metrics.accuracy is metrics.preference_accuracy
