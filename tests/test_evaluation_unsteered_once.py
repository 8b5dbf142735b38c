"""compare() runs the unsteered pass (m = 0 rows and the manifold reference) once per evaluation,
not once per method, and gives the same numbers as scoring each method on its own, the old way."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from easyedit_split.evaluation import PreferenceUtilityEvaluator
from easyedit_split.evaluation.manifold import ManifoldOptions, ManifoldProbe
from easyedit_split.evaluation.sweep_nll import EncodedPair, score_encoded_pairs
from easyedit_split.interventions import DynamicWeightUpdate

from conftest import build_tiny_model

MULTIPLIERS = [-2.0, -1.0, 0.0, 1.0, 2.0]
OPTIONS = ManifoldOptions(layers=[1, 3], variance_share=0.9, k=3, queries_per_row=8)


def _pairs(n=6, seed=0):
    generator = torch.Generator().manual_seed(seed)
    ids = lambda k: tuple(torch.randint(3, 97, (k,), generator=generator).tolist())  # noqa: E731
    return [EncodedPair(ids(6), ids(4), ids(5)) for _ in range(n)]


def _methods(layers=(1, 1, 1)):
    torch.manual_seed(3)
    return {f"m{i}": {layer: DynamicWeightUpdate.from_vector(torch.randn(32) * 0.5)} for i, layer in enumerate(layers)}


def _rows_through_last_layer(model):
    counted = []
    handle = model.model.layers[-1].register_forward_hook(lambda m, i, o: counted.append(int(i[0].shape[0])))
    return counted, handle


@pytest.mark.parametrize("manifold", [False, True])
def test_compare_runs_the_unsteered_rows_once(manifold):
    model = build_tiny_model("llama", num_layers=4)
    pairs, methods = _pairs(), _methods()
    evaluator = PreferenceUtilityEvaluator(model, None, multipliers=MULTIPLIERS, n_bootstrap=0, batch_size=256,
                                           manifold=OPTIONS if manifold else False)
    counted, handle = _rows_through_last_layer(model)
    try:
        evaluator.compare(methods, pairs)
    finally:
        handle.remove()
    n, k = len(pairs), len(MULTIPLIERS)
    assert sum(counted) == n + len(methods) * (k - 1) * n  # was len(methods) * (n + k * n) with the probe on


def test_a_method_at_another_layer_gets_its_own_unsteered_pass():
    model = build_tiny_model("llama", num_layers=4)
    pairs, methods = _pairs(), _methods((1, 2, 1))
    evaluator = PreferenceUtilityEvaluator(model, None, multipliers=MULTIPLIERS, n_bootstrap=0, batch_size=256,
                                           manifold=False)
    counted, handle = _rows_through_last_layer(model)
    try:
        evaluator.compare(methods, pairs)
    finally:
        handle.remove()
    n, k = len(pairs), len(MULTIPLIERS)
    assert sum(counted) == 2 * n + 3 * (k - 1) * n


def test_shared_unsteered_pass_gives_the_per_method_numbers():
    model = build_tiny_model("llama", num_layers=4)
    pairs, methods = _pairs(), _methods()
    evaluator = PreferenceUtilityEvaluator(model, None, multipliers=MULTIPLIERS, n_bootstrap=0, batch_size=256,
                                           manifold=OPTIONS)
    report = evaluator.compare(methods, pairs)
    for result, (name, updates) in zip(report.results, methods.items()):
        # the old way, by hand: a reference pass and a full sweep (m = 0 included) per method
        probe = ManifoldProbe(OPTIONS.layers, OPTIONS)
        score_encoded_pairs(model, pairs, {}, [0.0], activation_layers=probe.layers, activation_hook=probe.collect,
                            batch_size=256)
        probe.fit()
        scores = score_encoded_pairs(model, pairs, updates, MULTIPLIERS, batch_size=256,
                                     activation_layers=probe.layers, activation_hook=probe.measure)
        np.testing.assert_allclose(result.scores.matching_sum, scores.matching_sum, atol=1e-4, rtol=1e-5)
        np.testing.assert_allclose(result.scores.not_matching_sum, scores.not_matching_sum, atol=1e-4, rtol=1e-5)
        np.testing.assert_array_equal(result.scores.matching_tokens, scores.matching_tokens)
        expected = probe.result(MULTIPLIERS)
        for layer in OPTIONS.layers:
            np.testing.assert_allclose(result.manifold.pca_distance[layer], expected.pca_distance[layer], atol=1e-4)
            np.testing.assert_allclose(result.manifold.knn_distance[layer], expected.knn_distance[layer], atol=1e-4)
            np.testing.assert_allclose(result.manifold.pca_relative_residual[layer],
                                       expected.pca_relative_residual[layer], atol=1e-4)
    steered = report.results[0].scores.matching_sum
    assert not np.allclose(steered[0], steered[2])  # the methods do steer: the comparison is not vacuous
