"""`EvaluatorConfig`: every setting of the preference-utility evaluator and its one set of defaults.

The evaluator, the `evaluate` command and the demo all start from these defaults, so the default
sweep (`constants.DEFAULT_SWEEP`), the NLL mode and the bootstrap size are written once.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional, Sequence, Union

from ..constants import DEFAULT_SWEEP
from .manifold import ManifoldOptions
from .scoring import LAYOUTS, NLL_MODES

__all__ = ["EvaluatorConfig"]


@dataclass
class EvaluatorConfig:
    """How a preference-utility sweep is scored and summarised.

    Fields:
        multipliers: the sweep (sorted on construction); include 0, the unsteered reference of the
            summaries. Default: `constants.DEFAULT_SWEEP`.
        nll_mode: `sequence` (sum of completion-token NLLs) or `token` (per-token mean, EasyEdit's loss mode).
        batch_size: most rows per replayed forward (rows = pairs x multipliers).
        n_bootstrap: bootstrap resamples over examples for the confidence intervals.
        confidence: the intervals' coverage.
        seed: seed of the bootstrap and of the manifold probe's reference sample.
        manifold: `ManifoldOptions`, True (default options with `seed`) or False/None (no probe).
        layout: `packed` (one shared prompt pass per pair) or `rows` (each completion its own row).
        utility_loss: utility-loss budget (nats) of the summaries.
        frontier_max_loss: largest utility loss (nats) the preference-utility frontier spans.
        progress: tqdm progress bars.
        steer_from: first steered position; None = after the chat template's common prefix.
        memory_mb: working-set budget (MiB) of one capture or replay pass of the sweep: rows are
            processed in chunks that fit it (None = only `batch_size` limits them). Scores do not
            depend on it; on a GPU the captured inputs are kept in CPU memory.
    """

    multipliers: Sequence[float] = DEFAULT_SWEEP
    nll_mode: str = "sequence"
    batch_size: int = 64
    n_bootstrap: int = 1000
    confidence: float = 0.95
    seed: int = 0
    manifold: Union[ManifoldOptions, bool, None] = True
    layout: str = "packed"
    utility_loss: float = 1.0
    frontier_max_loss: float = 3.0
    progress: bool = True
    steer_from: Optional[int] = None
    memory_mb: Optional[float] = 2048.0

    def __post_init__(self) -> None:
        if self.nll_mode not in NLL_MODES:
            raise ValueError(f"nll_mode: '{self.nll_mode}' is not one of {NLL_MODES}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout: '{self.layout}' is not one of {LAYOUTS}")
        multipliers = [float(m) for m in self.multipliers]
        if not multipliers:
            raise ValueError("multipliers: give at least one value")
        if not all(math.isfinite(m) for m in multipliers):
            raise ValueError(f"multipliers: every value must be finite, got {multipliers}")
        self.multipliers = tuple(sorted(multipliers))
        if self.memory_mb is not None and not self.memory_mb > 0:
            raise ValueError(f"memory_mb: must be greater than 0 (or None), got {self.memory_mb}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size: must be at least 1, got {self.batch_size}")
        if self.n_bootstrap < 0:
            raise ValueError(f"n_bootstrap: must be 0 or more, got {self.n_bootstrap}")
        if not 0.0 < self.confidence < 1.0:
            raise ValueError(f"confidence: must be in (0, 1), got {self.confidence}")
        if not isinstance(self.manifold, (ManifoldOptions, bool, type(None))):
            raise ValueError(f"manifold: expected ManifoldOptions, True or False, got {type(self.manifold).__name__}")

    def manifold_options(self) -> Optional[ManifoldOptions]:
        """The probe's options (True means the defaults with this config's seed), or None when off."""
        if self.manifold is True:
            return ManifoldOptions(seed=self.seed)
        if isinstance(self.manifold, ManifoldOptions) and self.manifold.enabled:
            return self.manifold
        return None

    def replace(self, **changes: object) -> "EvaluatorConfig":
        """A copy with `changes` applied (an unknown name is a TypeError naming it)."""
        return dataclasses.replace(self, **changes)
