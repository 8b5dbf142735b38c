"""Reports of one or several evaluated methods: results.json, results.csv, PNG plots, report.md.

Every file is written atomically (temporary file + rename), so an interrupted run never leaves
a half-written report.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np

from .. import __version__
from ..storage import atomic_write, atomic_write_json, atomic_write_text

CSV_COLUMNS = (
    "method", "multiplier", "pref_odds_mean", "pref_odds_se", "pref_odds_ci_low", "pref_odds_ci_high",
    "util_odds_mean", "util_odds_se", "util_odds_ci_low", "util_odds_ci_high", "accuracy",
    "undefined_utility", "matching_nll_mean", "not_matching_nll_mean",
)


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return "-" if not np.isfinite(number) else f"{number:.{digits}f}"


@dataclass
class EvaluationReport:
    """Results of several methods on the same pairs, plus what was scored (`context`)."""

    results: Sequence[Any]            # MethodResult
    context: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"package": "easyedit_split", "package_version": __version__, "scored": self.context,
                "methods": {r.name: r.to_dict() for r in self.results}}

    # ------------------------------------------------------------------ tables
    def csv_text(self) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(CSV_COLUMNS)
        for r in self.results:
            m = r.metrics
            for k, multiplier in enumerate(m.multipliers):
                writer.writerow([
                    r.name, multiplier, m.preference.mean[k], m.preference.se[k], m.preference.ci_low[k],
                    m.preference.ci_high[k], m.utility.mean[k], m.utility.se[k], m.utility.ci_low[k],
                    m.utility.ci_high[k], m.accuracy[k], int(m.undefined_utility[k]), m.matching_nll_mean[k],
                    m.not_matching_nll_mean[k],
                ])
        return buffer.getvalue()

    def markdown_table(self) -> str:
        """One line per method: fits' R^2 and the comparison summaries, then per-multiplier means."""
        ctx = self.context
        loss = next((s.utility_loss for r in self.results for s in r.fits.summaries.values()), 1.0)
        area_loss = next((s.frontier_max_loss for r in self.results for s in r.fits.summaries.values()), 3.0)
        lines = [
            f"Scored: {ctx.get('n_examples', '?')} pairs of `{ctx.get('dataset')}`, {ctx.get('nll_mode')} NLL, "
            f"chat template {'on' if ctx.get('chat_template') else 'off'}, layout {ctx.get('layout')}. "
            f"Join rule: {ctx.get('join_rule')}.",
            "",
            f"| method | R^2 pref | R^2 util | pref gain @ util loss {loss:g} | m (util -{loss:g}) + | m (util -{loss:g}) - "
            f"| frontier area (loss <= {area_loss:g}) | acc @ m=0 | acc max |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in self.results:
            summary = r.fits.summaries.get("fit") or r.fits.summaries["interpolation"]
            inter = r.fits.summaries["interpolation"]
            acc = r.metrics.accuracy
            zero = np.nonzero(r.metrics.multipliers == 0)[0]
            lines.append(
                f"| {r.name} | {_fmt(r.fits.preference.r2, 3)} | {_fmt(r.fits.utility.r2, 3)} "
                f"| {_fmt(summary.preference_gain)} (interp {_fmt(inter.preference_gain)}) "
                f"| {_fmt(summary.drop_multiplier_pos)} | {_fmt(summary.drop_multiplier_neg)} "
                f"| {_fmt(summary.frontier_area)} (interp {_fmt(inter.frontier_area)}) "
                f"| {_fmt(acc[zero[0]]) if zero.size else '-'} | {_fmt(acc.max())} |"
            )
        lines += ["", "Per multiplier: PrefOdds mean ± SE / UtilOdds mean ± SE / accuracy", ""]
        multipliers = self.results[0].metrics.multipliers if self.results else []
        lines.append("| method | " + " | ".join(f"m={m:g}" for m in multipliers) + " |")
        lines.append("|---|" + "---|" * len(multipliers))
        for r in self.results:
            m = r.metrics
            cells = [
                f"{_fmt(m.preference.mean[k])}±{_fmt(m.preference.se[k])} / {_fmt(m.utility.mean[k])}±{_fmt(m.utility.se[k])}"
                f" / {_fmt(m.accuracy[k])}" + (f" ({int(m.undefined_utility[k])} undef.)" if m.undefined_utility[k] else "")
                for k in range(len(m.multipliers))
            ]
            lines.append(f"| {r.name} | " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    # ------------------------------------------------------------------ plots
    def plot(self, out_dir: Union[str, Path]) -> list[Path]:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        out_dir = Path(out_dir)
        written = []
        # preference and utility vs m
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for ax, name in zip(axes, ("preference", "utility")):
            ax.set_ylim(*_data_limits([getattr(r.metrics, name) for r in self.results]))  # a wild fit cannot hide the data
        for r in self.results:
            m = r.metrics
            grid = np.linspace(m.multipliers.min(), m.multipliers.max(), 300)
            for ax, stat, fit in ((axes[0], m.preference, r.fits.preference), (axes[1], m.utility, r.fits.utility)):
                line = ax.errorbar(m.multipliers, stat.mean, yerr=[stat.mean - stat.ci_low, stat.ci_high - stat.mean],
                                   fmt="o", capsize=3, label=r.name)
                if fit.converged:
                    ax.plot(grid, fit(grid), "-", color=line[0].get_color(), alpha=0.7,
                            label=f"{r.name} fit (R²={fit.r2:.2f})")
        axes[0].set(xlabel="multiplier m", ylabel="PrefOdds = L_n - L_p (nats)", title="Preference")
        axes[1].set(xlabel="multiplier m", ylabel="UtilOdds = log p - log(1-p)", title="Utility")
        for ax in axes:
            ax.axvline(0, color="grey", lw=0.5)
            ax.legend(fontsize=7)
        fig.tight_layout()
        written.append(_save_figure(fig, out_dir / "preference_utility.png"))
        plt.close(fig)
        # frontier
        fig, ax = plt.subplots(figsize=(5.5, 4.5))
        for r in self.results:
            m = r.metrics
            ax.plot(m.utility.mean, m.preference.mean, "o-", label=r.name)
            for k, multiplier in enumerate(m.multipliers):
                ax.annotate(f"{multiplier:g}", (m.utility.mean[k], m.preference.mean[k]), fontsize=6)
        ax.set(xlabel="UtilOdds", ylabel="PrefOdds", title="Preference-utility frontier (labels: m)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        written.append(_save_figure(fig, out_dir / "frontier.png"))
        plt.close(fig)
        # utility vs manifold distance
        with_manifold = [r for r in self.results if r.manifold is not None]
        if with_manifold:
            fig, axes = plt.subplots(1, 2, figsize=(11, 4))
            colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
            markers = "osD^v<>P*X"
            for index, r in enumerate(with_manifold):  # colour = method, marker = layer
                for ax, values, label in ((axes[0], r.manifold.pca_distance, "PCA residual"),
                                          (axes[1], r.manifold.knn_distance, "kNN distance")):
                    for depth, layer in enumerate(r.manifold.layers):
                        ax.plot(values[layer], r.metrics.utility.mean, "-", marker=markers[depth % len(markers)], ms=4,
                                color=colors[index % len(colors)], alpha=0.8, label=f"{r.name} L{layer}")
                    ax.set(xlabel=f"{label}: excess over unsteered", ylabel="UtilOdds", title=f"Utility vs {label}")
            for ax in axes:
                ax.legend(fontsize=6)
            fig.tight_layout()
            written.append(_save_figure(fig, out_dir / "manifold.png"))
            plt.close(fig)
        return written

    # ------------------------------------------------------------------ everything
    def write(self, out_dir: Union[str, Path], plots: bool = True) -> dict:
        """Write results.json, results.csv, report.md and the PNG plots; returns {kind: path}."""
        out_dir = Path(out_dir)
        paths = {
            "json": atomic_write_json(out_dir / "results.json", self.to_dict()),
            "csv": atomic_write_text(out_dir / "results.csv", self.csv_text()),
            "markdown": atomic_write_text(out_dir / "report.md", "# Preference-utility evaluation\n\n" + self.markdown_table()),
        }
        if plots:
            for path in self.plot(out_dir):
                paths[path.stem] = path
        return paths


def _data_limits(stats: Sequence[Any], margin: float = 0.08) -> tuple[float, float]:
    """y-limits spanning the plotted intervals (not the fitted curves), with a small margin."""
    low = min(float(np.nanmin(s.ci_low)) for s in stats)
    high = max(float(np.nanmax(s.ci_high)) for s in stats)
    pad = (high - low) * margin or 1.0
    return low - pad, high + pad


def _save_figure(fig: Any, path: Path) -> Path:
    """PNG written atomically, like every other report file."""
    return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
