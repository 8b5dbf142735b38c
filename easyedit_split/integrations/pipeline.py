"""EasyEdit's steering experiment pipeline, in-process: generate, apply + generate, loss, evaluate.

The example scripts (`examples/run_split.py`, `examples/vectors_generate.py`,
`examples/vectors_apply.py`) are thin front ends over these functions. Paths, directory names
and output files follow EasyEdit's `examples/run_SPILT.py`, `vectors_generate.py` and
`vectors_apply.py`, so that results land where EasyEdit's own scripts would put them:

    vectors/<model>/<method>/<dataset>/<method>_<intervention>/layer_<L>.pt         (CAA: caa_vector/)
    generation/<model>/<method>/<dataset>/<method>_<intervention>/m<m>/<data>_results.json
    vectors/<model>/get_sft_loss/<method>/<dataset>/<method>_<intervention>/
        <intervention>_<method>_m<m>_<winning_only|losing_only>/train_losses.csv

Everything runs in one process, with one model load per (model, dtype, device).
"""
from __future__ import annotations

import csv
import io
import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

import torch
from torch import nn

from ..apply import load_for_apply
from ..data import GenerationExample, PolarityPair, group_by_concept, list_datasets, load_dataset, load_generation_data
from ..errors import DatasetError, HparamsError
from ..interventions import DynamicWeightUpdate, attach
from ..models import load_model_and_tokenizer, model_device
from ..prompts import PromptFormat, steered_prompt_positions
from ..storage import atomic_write_text

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]

METHODS = ("caa", "reps", "sft", "spilt")
"""Method directory names of EasyEdit's spilt_experiment tree (SPLIT keeps EasyEdit's spelling)."""
INTERVENTION_METHODS = ("vector", "lora", "local_weight")
EASYEDIT_EXPERIMENT_DIR = Path("hparams/Steer/experiment_hparams/spilt_experiment")
LOSS_PREFERENCE_TYPES = ("winning_only", "losing_only")

# EasyEdit's hparams/Steer/dataset_format.yaml: where its datasets live, relative to its checkout.
EASYEDIT_TRAIN_FILES = {
    "psychopathy": "data/psychopathy/train.jsonl",
    "powerseeking": "data/powerseeking/train.csv",
    "axbench": "data/axbench/prod_9b_l20_v1/generate/dpo_train_data.parquet",
    "axbench_train": "data/axbench/axbench_train.parquet",
}
EASYEDIT_TEST_FILES = {
    "psychopathy": "data/psychopathy/test.jsonl",
    "axbench": "data/axbench/axbench_test.parquet",
    "axbench_test": "data/axbench/axbench_test.parquet",
}
EASYEDIT_GENERATION_FILES = {
    "psychopathy": "data/psychopathy/test.jsonl",
    "axbench": "data/axbench/alpaca_eval.json",
    "axbench_test": "data/axbench/axbench_test.parquet",
}


# ============================================================================ names and paths


def method_dir_name(method: str) -> str:
    """EasyEdit's directory name of a method: `split`/`SPLIT`/`spilt` -> `spilt`, others lower-case."""
    name = str(method).strip().lower()
    return "spilt" if name in ("split", "spilt") else name


def expand_runs(method: str, intervention_method: str) -> list[tuple[str, str]]:
    """(method, intervention) pairs for `all` on either side; CAA has vectors only (others skipped)."""
    methods = list(METHODS) if method == "all" else [method_dir_name(method)]
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


def vector_subdir(method: str, intervention_method: str) -> str:
    method = method_dir_name(method)
    return "caa_vector" if method == "caa" else f"{method}_{intervention_method}"


def hparams_roots(base_dir: PathLike) -> list[Path]:
    """Where method directories are looked up: this package's `hparams/` and EasyEdit's tree."""
    base = Path(base_dir)
    return [base / "hparams", base / EASYEDIT_EXPERIMENT_DIR]


def _first_existing(candidates: Iterable[Path]) -> Optional[Path]:
    for path in candidates:
        if path.is_file():
            return path
    return None


def find_train_hparams(base_dir: PathLike, dataset: str, model_name: str, method: str, intervention_method: str) -> Optional[Path]:
    """The generate file for (dataset, model, method, intervention), with EasyEdit's legacy names."""
    method = method_dir_name(method)
    candidates = []
    for root in hparams_roots(base_dir):
        leaf = root / dataset / model_name / method
        candidates.append(leaf / f"generate_{method}_{intervention_method}.yaml")
        if intervention_method == "local_weight":
            candidates.append(leaf / f"generate_{method}_weight.yaml")
        if method == "caa":
            candidates.append(leaf / "generate_caa.yaml")
    return _first_existing(candidates)


def find_apply_hparams(base_dir: PathLike, dataset: str, model_name: str, method: str) -> Optional[Path]:
    method = method_dir_name(method)
    return _first_existing(
        root / dataset / model_name / method / name
        for root in hparams_roots(base_dir) for name in (f"apply_{method}.yaml", "apply.yaml")
    )


def find_loss_hparams(base_dir: PathLike, dataset: str, model_name: str) -> Optional[Path]:
    return _first_existing(root / dataset / model_name / "sft" / "generate_sft_loss.yaml" for root in hparams_roots(base_dir))


# ============================================================================ data


def _easyedit_file(table: Mapping[str, str], dataset: str, base_dir: PathLike) -> Optional[Path]:
    relative = table.get(dataset)
    return Path(base_dir) / relative if relative else None


def resolve_data(dataset: str, base_dir: PathLike = ".", split: str = "train", data_file: Optional[PathLike] = None) -> Union[str, Path]:
    """What `load_dataset` should read for `dataset`: an explicit file, a shipped dataset, EasyEdit's file, or a path."""
    if data_file:
        return Path(data_file)
    if dataset in list_datasets():
        return dataset
    table = EASYEDIT_TRAIN_FILES if split == "train" else EASYEDIT_TEST_FILES
    path = _easyedit_file(table, dataset, base_dir)
    if path is not None:
        if not path.exists():
            raise DatasetError(
                f"dataset '{dataset}': EasyEdit keeps its {split} file at {path}, which does not exist. Copy EasyEdit's "
                f"data/ directory under --base_dir, or pass the file with --train_data/--eval_data. "
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
        path = _easyedit_file(EASYEDIT_GENERATION_FILES, dataset, base_dir)
        source = path if path is not None else dataset
        if path is not None and not path.exists():
            raise DatasetError(f"generation data '{dataset}': EasyEdit keeps it at {path}, which does not exist "
                               "(copy EasyEdit's data/ under --base_dir, or pass --generation_data_file)")
    examples = load_generation_data(source, split="test")
    return examples[: int(size)] if size else examples


# ============================================================================ models


@dataclass
class ModelPool:
    """Loads each (model, dtype, device) once; an injected model/tokenizer serves every request."""

    model: Optional[nn.Module] = None
    tokenizer: Any = None
    _loaded: dict = field(default_factory=dict)

    def get(self, hparams: Any) -> tuple[nn.Module, Any]:
        if self.model is not None:
            return self.model, self.tokenizer
        key = (str(getattr(hparams, "model_name_or_path", None)), str(getattr(hparams, "dtype", "float32")),
               str(getattr(hparams, "device", "cpu")))
        if key not in self._loaded:
            logger.info("loading model %s (%s on %s)", *key)
            self._loaded[key] = load_model_and_tokenizer(*key)
        return self._loaded[key]


# ============================================================================ generate (train)


# ============================================================================ apply + generate


def load_apply_updates(model: nn.Module, apply_hparams: Any, load_dir: Optional[PathLike] = None) -> dict[int, DynamicWeightUpdate]:
    """The updates named by apply hparams, scaled by their multipliers (EasyEdit's apply step)."""
    return load_for_apply(model, apply_hparams, load_dir)


def _generate_batch(model: nn.Module, tokenizer: Any, texts: list[str], prompt_format: PromptFormat,
                    generation_params: Mapping[str, Any], handles: Sequence[Any] = ()) -> tuple[list[str], list[str]]:
    add_special_tokens = not prompt_format.uses_template(tokenizer)
    encoded = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=add_special_tokens).to(model_device(model))
    steered = steered_prompt_positions(tokenizer, prompt_format, encoded["attention_mask"])
    for handle in handles:  # same steered positions as training, evaluation and SteerEditor.generate
        handle.positions = steered
    params = dict(generation_params)
    params.setdefault("pad_token_id", tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
    if not params.get("do_sample", False):
        for key in ("temperature", "top_p", "top_k"):
            params.pop(key, None)
    if "max_tokens" in params:  # vLLM's name
        params.setdefault("max_new_tokens", params.pop("max_tokens"))
    with torch.no_grad():
        output = model.generate(**encoded, **params)
    width = encoded["input_ids"].shape[1]
    preds = [tokenizer.decode(ids[width:], skip_special_tokens=True) for ids in output]
    # EasyEdit's complete_output: prompt + generation with special tokens, without our left padding.
    n_pad = [int(width - mask.sum()) for mask in encoded["attention_mask"]]
    complete = [tokenizer.decode(ids[pad:], skip_special_tokens=False) for ids, pad in zip(output, n_pad)]
    return preds, complete


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

    Every update set is hooked in at once (as EasyEdit applies all its apply files together);
    prompts run batched with left padding. Records: `input`, `orig_pred`, `pred` (one text per
    response), `reference_response`, `complete_output`.
    """
    params = dict(generation_params or {"max_new_tokens": 100})
    handles = [attach(model, dict(updates), 0.0) for updates in update_sets if updates]
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    rendered = [prompt_format.prompt_text(tokenizer, e.input) for e in examples]
    preds: list[list[str]] = [[] for _ in examples]
    complete: list[list[str]] = [[] for _ in examples]
    orig: list[list[str]] = [[] for _ in examples]
    try:
        for response in range(int(num_responses)):
            for multiplier, target_preds, target_complete in ((1.0, preds, complete), (0.0, orig, None)):
                if multiplier == 0.0 and not generate_orig_output:
                    continue
                for handle in handles:
                    handle.multiplier = multiplier
                torch.manual_seed(seed + response if num_responses > 1 else seed)
                for start in range(0, len(examples), batch_size):
                    texts, full = _generate_batch(model, tokenizer, rendered[start : start + batch_size], prompt_format, params, handles)
                    for offset, (text, whole) in enumerate(zip(texts, full)):
                        target_preds[start + offset].append(text)
                        if target_complete is not None:
                            target_complete[start + offset].append(whole)
    finally:
        tokenizer.padding_side = side
        for handle in handles:
            handle.remove()
    return [
        {"input": e.input, "orig_pred": orig[i] if generate_orig_output else [], "pred": preds[i],
         "reference_response": e.reference_response, "complete_output": complete[i]}
        for i, e in enumerate(examples)
    ]


def write_generation_results(results: list[dict], output_dir: PathLike, dataset_name: str) -> Path:
    """`<output_dir>/<dataset>_results.json`, as EasyEdit's `BaseVectorApplier.save_results`."""
    path = Path(output_dir) / f"{dataset_name}_results.json"
    atomic_write_text(path, json.dumps(results, indent=4, ensure_ascii=False))
    return path


# ============================================================================ loss


LOSS_CSV_NAME = "train_losses.csv"
PER_EXAMPLE_CSV_NAME = "per_example_nll.csv"


def _factor_text(value: float) -> str:
    """A steering factor as EasyEdit's loss CSV prints it (the repr of a one-element tensor)."""
    return str(torch.tensor([float(value)]))


def loss_csv_header(hparams: Any) -> list[str]:
    """EasyEdit's SFT loss CSV header: optional columns appear only for non-zero loss weights."""
    header = ["epoch", "step", "pos_steer_loss"]
    if getattr(hparams, "neg_loss_weight", 0):
        header.append("neg_steer_loss")
    if getattr(hparams, "ref_loss_weight", 0):
        header.extend(["pos_ref_loss", "neg_ref_loss"])
    if getattr(hparams, "margin_penalty_weight", 0):
        header.append("margin_loss")
    if getattr(hparams, "ref_loss_weight", 0):
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


def score_loss_rows(model: nn.Module, tokenizer: Any, hparams: Any, pairs: Sequence[PolarityPair],
                    updates: Mapping[int, DynamicWeightUpdate], multipliers: Sequence[float], batch_size: int = 64) -> LossRows:
    """Score both completions of every pair at 0, +m and -m for each m, in one batched sweep."""
    from ..evaluation.scoring import score_pairs

    sweep = sorted({0.0} | {float(s) * float(m) for m in multipliers for s in (1.0, -1.0)})
    scores = score_pairs(model, tokenizer, pairs, dict(updates), sweep, fmt=PromptFormat.from_hparams(hparams),
                         nll_mode="token", batch_size=batch_size)
    return LossRows(sweep, scores.matching_sum, scores.not_matching_sum, scores.matching_tokens, scores.not_matching_tokens)


def loss_csv_text(rows: LossRows, hparams: Any, multiplier: float, preference_type: str) -> str:
    """EasyEdit's `train_losses.csv` for one (m, sft_preference_type) run of its loss mode.

    One row per (example, preference pair): `orig_add` steers at +m with the matching
    completion as the winner; `orig_sub` at -m with winner and loser swapped. `winning_only`
    reports the winner's per-token mean NLL, `losing_only` the loser's. Rows are in data order
    (EasyEdit's loader shuffles them), `step` is the example index, epoch 0.
    """
    if preference_type not in LOSS_PREFERENCE_TYPES:
        raise HparamsError(f"sft_preference_type: '{preference_type}' is not one of {LOSS_PREFERENCE_TYPES}")
    out = io.StringIO()
    writer = csv.writer(out)
    header = loss_csv_header(hparams)
    writer.writerow(header)
    n_examples = len(rows.matching_tokens)
    pairs = list(getattr(hparams, "preference_pairs", ["orig_add", "orig_sub"]))
    margin_weight = float(getattr(hparams, "margin_penalty_weight", 0) or 0)
    threshold = float(getattr(hparams, "margin_threshold", 0.5))
    ref_weight = float(getattr(hparams, "ref_loss_weight", 0) or 0)
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


def loss_output_dir(output_root: PathLike, model_name: str, method: str, dataset: str, intervention_method: str,
                    multiplier: float, preference_type: str) -> Path:
    method = method_dir_name(method)
    leaf = f"{intervention_method}_{method}_m{multiplier}_{preference_type}"
    return Path(output_root) / "vectors" / model_name / "get_sft_loss" / method / dataset / f"{method}_{intervention_method}" / leaf


def with_overrides(hparams: Any, overrides: Mapping[str, Any]) -> Any:
    """A copy of `hparams` with the `overrides` keys its class has (others are skipped, as EasyEdit does)."""
    valid = set(type(hparams).__dataclass_fields__)
    chosen = {k: v for k, v in overrides.items() if k in valid}
    return replace(hparams, **chosen) if chosen else hparams
