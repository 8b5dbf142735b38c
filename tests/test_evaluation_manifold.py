"""Manifold probe: zero distance for the unsteered model, growing with |m|."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from easyedit_split.evaluation.manifold import ManifoldOptions, ManifoldProbe, correlations, default_probe_layers
from easyedit_split.evaluation.sweep_nll import EncodedPair, score_encoded_pairs
from easyedit_split.interventions import DynamicWeightUpdate

from conftest import build_tiny_model


def _pairs(n=10, seed=0):
    generator = torch.Generator().manual_seed(seed)
    ids = lambda k: tuple(torch.randint(3, 97, (k,), generator=generator).tolist())  # noqa: E731
    return [EncodedPair(ids(6), ids(4), ids(5)) for _ in range(n)]


def test_default_probe_layers():
    assert default_probe_layers(15, 30, 3) == [15, 20, 24, 29]
    assert default_probe_layers(3, 4, 3) == [3]


def test_distance_is_zero_unsteered_and_grows_with_multiplier():
    model = build_tiny_model("llama", num_layers=4)
    pairs = _pairs()
    torch.manual_seed(1)
    vector = torch.randn(32)
    updates = {1: DynamicWeightUpdate.from_vector(vector / vector.norm())}
    probe = ManifoldProbe([1, 3], ManifoldOptions(variance_share=0.9, k=3, queries_per_row=8))
    score_encoded_pairs(model, pairs, {}, [0.0], activation_layers=probe.layers, activation_hook=probe.collect)
    probe.fit()
    multipliers = [-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0]
    score_encoded_pairs(model, pairs, updates, multipliers, activation_layers=probe.layers, activation_hook=probe.measure)
    result = probe.result(multipliers, utility_means=-np.abs(multipliers))
    zero = multipliers.index(0.0)
    for layer in probe.layers:
        for distance in (result.pca_distance[layer], result.knn_distance[layer]):
            assert abs(distance[zero]) < 1e-4
            assert distance[zero + 1] < distance[zero + 2] < distance[zero + 3]   # grows for m > 0
            assert distance[zero - 1] < distance[zero - 2] < distance[zero - 3]   # and for m < 0
        assert result.correlations[layer]["pca_distance"]["spearman"] < -0.5
    assert 0 < result.dimensions[1] <= 32
    assert set(result.to_dict()) >= {"pca_distance", "knn_distance", "correlations"}


def test_correlations_handle_constant_input():
    assert correlations([1, 1, 1], [1, 2, 3])["pearson"] is None
    assert correlations([1, 2, 3, 4], [2, 4, 6, 8])["pearson"] == pytest.approx(1.0)

