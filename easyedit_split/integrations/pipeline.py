"""EasyEdit's steering experiment pipeline, in-process: generate, apply + generate, loss, evaluate.

The example scripts (`examples/run_split.py`, `examples/vectors_generate.py`,
`examples/vectors_apply.py`) are thin front ends over these functions. Paths, directory names
and output files follow EasyEdit's `examples/run_SPILT.py`, `vectors_generate.py` and
`vectors_apply.py`, so that results land where EasyEdit's own scripts would put them (the
path conventions live in `storage`, EasyEdit's data file tables in `data`; generation is
`generation.generate_steered`).

Everything runs in one process, with one model load per (model, dtype, device).
"""
from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import torch
from torch import nn

from ..apply import load_for_apply
from ..constants import INTERVENTION_METHODS, METHOD_NAMES, SFT_PREFERENCE_TYPES, easyedit_alg_dir_name
from ..data import GenerationExample, PolarityPair, group_by_concept, list_datasets, load_dataset, load_generation_data
from ..easyedit_layout import EASYEDIT_GENERATION_FILES, EASYEDIT_TEST_FILES, EASYEDIT_TRAIN_FILES, easyedit_data_file
from ..errors import DatasetError, HparamsError
from ..evaluation.sweep_nll import score_pairs
from ..generation import GenerationSettings, generate_steered
from ..hparams import HyperParams, SFTHyperParams, SplitHyperParams
from ..hparams.reading import keep_known_keys
from ..interventions import DynamicWeightUpdate
from ..models import load_model_and_tokenizer, require_model_name
from ..prompts import PromptFormat
from ..storage.files import atomic_write_text, json_text

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]
LossHyperParams = Union[SFTHyperParams, SplitHyperParams]
"""The methods with NLL loss weights, whose losses EasyEdit's loss mode reports."""


def expand_runs(method: str, intervention_method: str) -> list[tuple[str, str]]:
    """(method, intervention) pairs for `all` on either side; CAA has vectors only (others skipped).

    Methods are EasyEdit's directory names (`spilt` for SPLIT)."""
    methods = [easyedit_alg_dir_name(name) for name in METHOD_NAMES] if method == "all" else [easyedit_alg_dir_name(method)]
    interventions = list(INTERVENTION_METHODS) if intervention_method == "all" else [intervention_method]
    runs = []
    for name in methods:
        for intervention in interventions:
            if name == "caa" and intervention != "vector":
                logger.info("caa has only vector interventions; skipping intervention_method=%s", intervention)
                continue
            if (name, intervention) not in runs:
                runs.append((name, intervention))
    return runs


# ============================================================================ data


def resolve_data(dataset: str, base_dir: PathLike = ".", split: str = "train", data_file: Optional[PathLike] = None) -> Union[str, Path]:
    """What `load_dataset` should read for `dataset`: an explicit file, a shipped dataset, EasyEdit's file, or a path."""
    if data_file:
        return Path(data_file)
    if dataset in list_datasets():
        return dataset
    table = EASYEDIT_TRAIN_FILES if split == "train" else EASYEDIT_TEST_FILES
    path = easyedit_data_file(table, dataset, base_dir)
    if path is not None:
        if not path.exists():
            raise DatasetError(
                f"dataset '{dataset}': EasyEdit keeps its {split} file at {path}, which does not exist. Copy EasyEdit's "
                f"data/ directory under --base_dir, or pass the file with --train-data/--eval-data. "
                f"Shipped datasets that need no files: {', '.join(list_datasets())}."
            )
        return path
    return dataset


def load_pairs(dataset: str, base_dir: PathLike = ".", split: str = "train", data_file: Optional[PathLike] = None,
               limit: Optional[int] = None) -> list[PolarityPair]:
    """Polarity pairs of `dataset` (see `resolve_data`); `limit` keeps the first pairs of each concept."""
    pairs = load_dataset(resolve_data(dataset, base_dir, split, data_file), split=split)
    if limit:
        pairs = [p for group in group_by_concept(pairs).values() for p in group[: int(limit)]]
    return pairs


def load_prompts(dataset: str, base_dir: PathLike = ".", data_file: Optional[PathLike] = None,
                 size: Optional[int] = None) -> list[GenerationExample]:
    """Generation prompts: an explicit file, a shipped dataset's test split, EasyEdit's generation file, or a path."""
    if data_file:
        source: Union[str, Path] = Path(data_file)
    elif dataset in list_datasets():
        source = dataset
    else:
        path = easyedit_data_file(EASYEDIT_GENERATION_FILES, dataset, base_dir)
        source = path if path is not None else dataset
        if path is not None and not path.exists():
            raise DatasetError(f"generation data '{dataset}': EasyEdit keeps it at {path}, which does not exist "
                               "(copy EasyEdit's data/ under --base_dir, or pass --generation-data-file)")
    examples = load_generation_data(source, split="test")
    return examples[: int(size)] if size else examples


# ============================================================================ models


@dataclass
class ModelPool:
    """Loads each (model, dtype, device) once; an injected model/tokenizer serves every request."""

    model: Optional[nn.Module] = None
    tokenizer: Any = None
    _loaded: dict = field(default_factory=dict)

    def get(self, hparams: HyperParams) -> tuple[nn.Module, Any]:
        if self.model is not None:
            return self.model, self.tokenizer
        where = f"{getattr(hparams, 'alg_name', type(hparams).__name__)} method file (merged with the top-level config)"
        key = (require_model_name(hparams.model_name_or_path, where), str(hparams.dtype), str(hparams.device))
        if key not in self._loaded:
            logger.info("loading model %s (%s on %s)", *key)
            self._loaded[key] = load_model_and_tokenizer(*key)
        return self._loaded[key]


# ============================================================================ generate (train)


# ============================================================================ apply + generate


def load_apply_updates(model: nn.Module, apply_hparams: Any, load_dir: Optional[PathLike] = None) -> dict[int, DynamicWeightUpdate]:
    """The updates named by apply hparams, scaled by their multipliers (EasyEdit's apply step)."""
    return load_for_apply(model, apply_hparams, load_dir)


def generate_results(
    model: nn.Module,
    tokenizer: Any,
    prompt_format: PromptFormat,
    examples: Sequence[GenerationExample],
    update_sets: Sequence[Mapping[int, DynamicWeightUpdate]],
    generation_params: Optional[Mapping[str, Any]] = None,
    num_responses: int = 1,
    generate_orig_output: bool = False,
    batch_size: int = 8,
    seed: int = 42,
) -> list[dict]:
    """Steered (and optionally unsteered) generations in EasyEdit's `<data>_results.json` records.

    Every update set is hooked in at once (as EasyEdit applies all its apply files together) at
    multiplier 1 (the apply files' multipliers are already in the updates); the unsteered texts
    are the rows at multiplier 0 of the same `generation.generate_steered` call. Records:
    `input`, `orig_pred`, `pred` (one text per response), `reference_response`, `complete_output`,
    and `steer_positions` (the rule used, docs/conventions.md).
    """
    settings = GenerationSettings.from_params(generation_params or {"max_new_tokens": 100},
                                              num_samples=int(num_responses), seed=int(seed), batch_size=int(batch_size))
    multipliers = [1.0, 0.0] if generate_orig_output else [1.0]
    generated = generate_steered(model, tokenizer, [e.input for e in examples], list(update_sets), multipliers,
                                 settings, prompt_format)
    preds: list[list[str]] = [[] for _ in examples]
    complete: list[list[str]] = [[] for _ in examples]
    orig: list[list[str]] = [[] for _ in examples]
    for record in generated:  # ordered by sample, so each list holds one text per response
        if record.multiplier == 1.0:
            preds[record.prompt_index].append(record.text)
            complete[record.prompt_index].append(record.complete_output)
        else:
            orig[record.prompt_index].append(record.text)
    return [
        {"input": e.input, "orig_pred": orig[i], "pred": preds[i],
         "reference_response": e.reference_response, "complete_output": complete[i],
         "steer_positions": prompt_format.steer_positions}  # not in EasyEdit's records: which positions were steered
        for i, e in enumerate(examples)
    ]


def write_generation_results(results: list[dict], output_dir: PathLike, dataset_name: str) -> Path:
    """`<output_dir>/<dataset>_results.json`, as EasyEdit's `BaseVectorApplier.save_results`."""
    path = Path(output_dir) / f"{dataset_name}_results.json"
    atomic_write_text(path, json_text(results, indent=4, sort_keys=False, ensure_ascii=False))
    return path


# ============================================================================ loss


def _factor_text(value: float) -> str:
    """A steering factor as EasyEdit's loss CSV prints it (the repr of a one-element tensor)."""
    return str(torch.tensor([float(value)]))


def loss_csv_header(hparams: LossHyperParams) -> list[str]:
    """EasyEdit's SFT loss CSV header: optional columns appear only for non-zero loss weights."""
    header = ["epoch", "step", "pos_steer_loss"]
    if hparams.neg_loss_weight:
        header.append("neg_steer_loss")
    if hparams.ref_loss_weight:
        header.extend(["pos_ref_loss", "neg_ref_loss"])
    if hparams.margin_penalty_weight:
        header.append("margin_loss")
    if hparams.ref_loss_weight:
        header.append("ref_loss")
    return header + ["pos_steering_factors", "neg_steering_factors"]


@dataclass
class LossRows:
    """Per-example NLL sums and token counts at 0, +m and -m: sums are `[K multipliers, N examples]`."""

    multipliers: list[float]
    matching_sum: Any
    not_matching_sum: Any
    matching_tokens: Any
    not_matching_tokens: Any

    def mean(self, which: str, multiplier: float) -> Any:
        k = self.multipliers.index(float(multiplier))
        total = self.matching_sum if which == "matching" else self.not_matching_sum
        count = self.matching_tokens if which == "matching" else self.not_matching_tokens
        return total[k] / count


def score_loss_rows(model: nn.Module, tokenizer: Any, hparams: HyperParams, pairs: Sequence[PolarityPair],
                    updates: Mapping[int, DynamicWeightUpdate], multipliers: Sequence[float], batch_size: int = 64) -> LossRows:
    """Score both completions of every pair at 0, +m and -m for each m, in one batched sweep."""
    sweep = sorted({0.0} | {float(s) * float(m) for m in multipliers for s in (1.0, -1.0)})
    scores = score_pairs(model, tokenizer, pairs, dict(updates), sweep, fmt=PromptFormat.from_hparams(hparams),
                         nll_mode="token", batch_size=batch_size)
    return LossRows(sweep, scores.matching_sum, scores.not_matching_sum, scores.matching_tokens, scores.not_matching_tokens)


def loss_csv_text(rows: LossRows, hparams: LossHyperParams, multiplier: float, preference_type: str) -> str:
    """EasyEdit's `train_losses.csv` for one (m, sft_preference_type) run of its loss mode.

    One row per (example, preference pair): `orig_add` steers at +m with the matching
    completion as the winner; `orig_sub` at -m with winner and loser swapped. `winning_only`
    reports the winner's per-token mean NLL, `losing_only` the loser's. Rows are in data order
    (EasyEdit's loader shuffles them), `step` is the example index, epoch 0.
    """
    if preference_type not in SFT_PREFERENCE_TYPES:
        raise HparamsError(f"sft_preference_type: '{preference_type}' is not one of {SFT_PREFERENCE_TYPES}")
    out = io.StringIO()
    writer = csv.writer(out)
    header = loss_csv_header(hparams)
    writer.writerow(header)
    n_examples = len(rows.matching_tokens)
    pairs = list(hparams.preference_pairs)
    margin_weight = float(hparams.margin_penalty_weight)
    threshold = float(hparams.margin_threshold)
    ref_weight = float(hparams.ref_loss_weight)
    for example in range(n_examples):
        for pair in pairs:
            factor = float(multiplier) if pair.endswith("_add") else -float(multiplier)
            winner, loser = ("matching", "not_matching") if pair.endswith("_add") else ("not_matching", "matching")
            reported = winner if preference_type == "winning_only" else loser
            # EasyEdit's neg_* columns always read the losing completion.
            pos, neg = float(rows.mean(reported, factor)[example]), float(rows.mean(loser, factor)[example])
            pos_ref, neg_ref = float(rows.mean(reported, 0.0)[example]), float(rows.mean(loser, 0.0)[example])
            values = {
                "epoch": 0, "step": example, "pos_steer_loss": pos, "neg_steer_loss": neg,
                "pos_ref_loss": pos_ref, "neg_ref_loss": neg_ref,
                "margin_loss": margin_weight * max(0.0, threshold - (neg - pos)),
                "ref_loss": ref_weight * (max(0.0, pos - pos_ref) + max(0.0, neg - neg_ref)),
            }
            writer.writerow([values[column] for column in header[:-2]] + [_factor_text(factor), _factor_text(factor)])
    return out.getvalue()


def per_example_csv_text(rows: LossRows) -> str:
    """Tidy per-example NLLs: one line per (example, multiplier), per-token means and sums."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["example", "multiplier", "matching_nll", "not_matching_nll", "matching_nll_sum",
                     "not_matching_nll_sum", "matching_tokens", "not_matching_tokens"])
    for k, multiplier in enumerate(rows.multipliers):
        for example in range(len(rows.matching_tokens)):
            m_sum, n_sum = float(rows.matching_sum[k][example]), float(rows.not_matching_sum[k][example])
            m_tok, n_tok = int(rows.matching_tokens[example]), int(rows.not_matching_tokens[example])
            writer.writerow([example, multiplier, m_sum / m_tok, n_sum / n_tok, m_sum, n_sum, m_tok, n_tok])
    return out.getvalue()


def with_overrides(hparams: Any, overrides: Mapping[str, Any]) -> Any:
    """A copy of `hparams` with the `overrides` keys its class has (others are skipped, as EasyEdit does)."""
    chosen = keep_known_keys(type(hparams), overrides)
    return replace(hparams, **chosen) if chosen else hparams
