"""Activation-manifold probe: how far steered activations leave the unsteered manifold.

Reference: unsteered activations (every real token of the scored rows: prompt and both
completions) at the steered layer and a few later layers. Two estimates of the manifold:
- PCA subspace keeping `variance_share` of the variance. For an activation `x`, the residual is
  `r = (x - mu) - P (x - mu)` with `P` the projection on the kept components. Reported:
  `pca_relative_residual(m)` = mean over tokens of `|r| / |x - mu|`, and
  `pca_distance(m)` = mean `|r|` at m divided by the unsteered mean `|r|`, minus 1.
- k nearest neighbours: distance from a token to its k-th nearest unsteered reference token
  from a *different* pair (so a token never finds itself). `knn_distance(m)` = mean at m divided
  by the unsteered mean, minus 1. kNN uses up to `queries_per_row` tokens per row (picked
  deterministically per pair) and at most `max_reference` reference tokens.
Both distances are 0 for the unsteered model (m = 0) by construction and grow as steering pushes
activations off the manifold. Their Pearson/Spearman correlations with UtilOdds(m) are reported
per layer.

Activations come from forward hooks on the decoder layers during the replayed sweep
(`sweep_nll.score_encoded_pairs(activation_hook=...)`); the hook sees a layer's output after the
intervention's delta was added.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch

from .metrics import _jsonable


def default_probe_layers(steered_layer: int, n_layers: int, n_later: int = 3) -> list[int]:
    """The steered layer and `n_later` layers spread evenly after it (the last layer included)."""
    later = np.linspace(steered_layer, n_layers - 1, n_later + 1)[1:]
    return sorted({steered_layer, *(int(round(x)) for x in later)})


@dataclass
class ManifoldOptions:
    """How the probe runs.

    Fields:
        enabled: run the probe at all.
        layers: absolute layer indices; None = `default_probe_layers(min steered layer)`.
        n_later: later layers added by the default choice.
        variance_share: share of the unsteered variance the PCA subspace keeps.
        k: which nearest neighbour (k-th) measures the kNN distance.
        queries_per_row: tokens per row whose kNN distance is measured.
        max_reference: most unsteered tokens kept as kNN reference (random, seeded).
        seed: token sampling seed.
    """

    enabled: bool = True
    layers: Optional[Sequence[int]] = None
    n_later: int = 3
    variance_share: float = 0.9
    k: int = 5
    queries_per_row: int = 16
    max_reference: int = 2048
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.variance_share <= 1:
            raise ValueError(f"variance_share must be in (0, 1], got {self.variance_share}")
        if self.k < 1 or self.queries_per_row < 1 or self.max_reference < 2:
            raise ValueError("k and queries_per_row must be >= 1, max_reference >= 2")


@dataclass
class _LayerModel:
    mean: torch.Tensor
    components: torch.Tensor      # [H, d]
    reference: torch.Tensor       # [R, H]
    reference_pairs: torch.Tensor  # [R]
    baseline_residual: float = 1.0
    baseline_knn: float = 1.0


@dataclass
class ManifoldResult:
    """Per layer, arrays over multipliers, plus correlations with UtilOdds."""

    multipliers: np.ndarray
    layers: list[int]
    dimensions: dict              # layer -> kept PCA dimensions
    pca_distance: dict            # layer -> [K]
    pca_relative_residual: dict   # layer -> [K]
    knn_distance: dict            # layer -> [K]
    correlations: dict = field(default_factory=dict)  # layer -> {measure: {pearson, spearman}}
    options: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        def per_layer(values: dict) -> dict:
            return {str(layer): _jsonable(values[layer]) for layer in self.layers}

        return {
            "multipliers": _jsonable(self.multipliers), "layers": list(self.layers),
            "dimensions": {str(k): int(v) for k, v in self.dimensions.items()},
            "pca_distance": per_layer(self.pca_distance),
            "pca_relative_residual": per_layer(self.pca_relative_residual),
            "knn_distance": per_layer(self.knn_distance),
            "correlations": {str(k): v for k, v in self.correlations.items()},
            "options": self.options,
        }


def _query_ranks(pair: int, n_valid: int, count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, pair])
    return np.sort(rng.permutation(n_valid)[: min(count, n_valid)])


class ManifoldProbe:
    """Collect unsteered activations (`collect`), `fit`, then accumulate steered distances (`measure`)."""

    def __init__(self, layers: Sequence[int], options: ManifoldOptions = ManifoldOptions()) -> None:
        self.layers = sorted(set(int(x) for x in layers))
        self.options = options
        self._collected: dict[int, list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = {l: [] for l in self.layers}
        self._models: dict[int, _LayerModel] = {}
        self._sums: dict[tuple[int, float], np.ndarray] = {}  # (layer, m) -> [residual, relative, n, knn, n_knn]
        self._unsteered_sums: dict[int, np.ndarray] = {}  # layer -> the sums `measure` gives the reference tokens

    # ------------------------------------------------------------------ token selection
    def _tokens(self, hidden: torch.Tensor, pairs: torch.Tensor, valid: torch.Tensor):
        """All valid tokens [T, H] with their pair ids and a 'is a kNN query' flag."""
        hidden = hidden.detach().float()
        tokens, token_pairs, queries = [], [], []
        for row in range(hidden.shape[0]):
            positions = valid[row].nonzero(as_tuple=True)[0]
            tokens.append(hidden[row, positions].cpu())
            pair = int(pairs[row])
            token_pairs.append(torch.full((positions.numel(),), pair, dtype=torch.long))
            flag = torch.zeros(positions.numel(), dtype=torch.bool)
            flag[torch.from_numpy(_query_ranks(pair, positions.numel(), self.options.queries_per_row, self.options.seed))] = True
            queries.append(flag)
        return torch.cat(tokens), torch.cat(token_pairs), torch.cat(queries)

    # ------------------------------------------------------------------ pass 1
    def collect(self, layer: int, hidden: torch.Tensor, pairs: torch.Tensor, multipliers: torch.Tensor,
                valid: torch.Tensor) -> None:
        """Activation hook for the unsteered pass."""
        if layer in self._collected:
            self._collected[layer].append(self._tokens(hidden, pairs, valid))

    def fit(self) -> None:
        generator = torch.Generator().manual_seed(self.options.seed)
        for layer in self.layers:
            if not self._collected[layer]:
                raise RuntimeError(f"manifold probe: no unsteered activations were collected at layer {layer}")
            tokens = torch.cat([t for t, _, _ in self._collected[layer]]).double()
            pairs = torch.cat([p for _, p, _ in self._collected[layer]])
            queries = torch.cat([q for _, _, q in self._collected[layer]])
            mean = tokens.mean(0)
            _, singular, vh = torch.linalg.svd(tokens - mean, full_matrices=False)
            share = torch.cumsum(singular ** 2, 0) / (singular ** 2).sum().clamp_min(1e-30)
            dims = int(torch.searchsorted(share, torch.tensor(self.options.variance_share, dtype=share.dtype)).item()) + 1
            dims = min(dims, vh.shape[0])
            pick = torch.randperm(tokens.shape[0], generator=generator)[: self.options.max_reference]
            model = _LayerModel(mean.float(), vh[:dims].T.float().contiguous(), tokens[pick].float(), pairs[pick])
            self._models[layer] = model
            residual, relative = self._residuals(model, tokens.float())
            model.baseline_residual = float(residual.mean())
            knn = self._knn(model, tokens[queries].float(), pairs[queries])
            model.baseline_knn = float(np.nanmean(knn)) if knn.size else 1.0
            finite = knn[np.isfinite(knn)]
            self._unsteered_sums[layer] = np.array([float(residual.sum()), float(relative.sum()), residual.numel(),
                                                    float(finite.sum()), finite.size])
        self._collected = {l: [] for l in self.layers}

    def fitted_copy(self) -> "ManifoldProbe":
        """A probe sharing this one's fitted reference (read-only) with no measurements yet.

        Why: the reference depends only on the unsteered model, the pairs and the layers, so several
        methods in one evaluation fit it once (`PreferenceUtilityEvaluator.compare`).
        """
        if not self._models:
            raise RuntimeError("manifold probe: fitted_copy() before fit()")
        copy = ManifoldProbe(self.layers, self.options)
        copy._models = self._models
        copy._unsteered_sums = self._unsteered_sums
        return copy

    def add_unsteered(self, multiplier: float = 0.0) -> None:
        """Record the reference tokens as the measurement at `multiplier` (the unsteered model).

        The unsteered rows of a sweep are the reference pass's rows, so they are not run again.
        """
        for layer in self.layers:
            sums = self._sums.setdefault((layer, float(multiplier)), np.zeros(5))
            sums += self._unsteered_sums[layer]

    # ------------------------------------------------------------------ pass 2
    @staticmethod
    def _residuals(model: _LayerModel, tokens: torch.Tensor):
        centered = tokens - model.mean
        residual = centered - (centered @ model.components) @ model.components.T
        norm = residual.norm(dim=-1)
        return norm, norm / centered.norm(dim=-1).clamp_min(1e-12)

    def _knn(self, model: _LayerModel, queries: torch.Tensor, query_pairs: torch.Tensor) -> np.ndarray:
        if queries.shape[0] == 0:
            return np.zeros(0)
        distances = torch.cdist(queries, model.reference)
        distances[query_pairs.unsqueeze(1) == model.reference_pairs.unsqueeze(0)] = float("inf")
        k = min(self.options.k, distances.shape[1])
        kth = distances.topk(k, dim=1, largest=False).values[:, -1]
        return kth.numpy()

    def measure(self, layer: int, hidden: torch.Tensor, pairs: torch.Tensor, multipliers: torch.Tensor,
                valid: torch.Tensor) -> None:
        """Activation hook for the steered sweep: accumulates distances per (layer, multiplier)."""
        model = self._models.get(layer)
        if model is None:
            return
        for value in torch.unique(multipliers).tolist():
            rows = (multipliers == value).nonzero(as_tuple=True)[0]
            tokens, token_pairs, queries = self._tokens(hidden[rows.to(hidden.device)], pairs[rows], valid[rows.to(valid.device)])
            residual, relative = self._residuals(model, tokens)
            knn = self._knn(model, tokens[queries], token_pairs[queries])
            finite = knn[np.isfinite(knn)]
            sums = self._sums.setdefault((layer, float(value)), np.zeros(5))
            sums += [float(residual.sum()), float(relative.sum()), residual.numel(), float(finite.sum()), finite.size]

    def result(self, multipliers: Sequence[float], utility_means: Optional[Sequence[float]] = None) -> ManifoldResult:
        multipliers = [float(m) for m in multipliers]
        pca, relative, knn, dims, corr = {}, {}, {}, {}, {}
        for layer in self.layers:
            model = self._models[layer]
            dims[layer] = model.components.shape[1]
            rows = [self._sums.get((layer, m), np.full(5, np.nan)) for m in multipliers]
            with np.errstate(invalid="ignore", divide="ignore"):
                pca[layer] = np.array([r[0] / r[2] for r in rows]) / model.baseline_residual - 1.0
                relative[layer] = np.array([r[1] / r[2] for r in rows])
                knn[layer] = np.array([r[3] / r[4] for r in rows]) / model.baseline_knn - 1.0
            if utility_means is not None:
                corr[layer] = {name: correlations(values[layer], utility_means)
                               for name, values in (("pca_distance", pca), ("knn_distance", knn))}
        options = {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in self.options.__dict__.items()}
        return ManifoldResult(np.asarray(multipliers), self.layers, dims, pca, relative, knn, corr, options)


def correlations(x: Sequence[float], y: Sequence[float]) -> dict:
    """Pearson and Spearman correlation over finite points (None when undefined)."""
    from scipy import stats  # here, not at the top: scipy.stats costs start-up time to every evaluator import

    x, y = np.asarray(x, float), np.asarray(y, float)
    keep = np.isfinite(x) & np.isfinite(y)
    if keep.sum() < 3 or np.ptp(x[keep]) == 0 or np.ptp(y[keep]) == 0:
        return {"pearson": None, "spearman": None, "n": int(keep.sum())}
    return {"pearson": float(stats.pearsonr(x[keep], y[keep])[0]),
            "spearman": float(stats.spearmanr(x[keep], y[keep])[0]), "n": int(keep.sum())}
