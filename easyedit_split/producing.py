"""Run the method named by `alg_name` on polarity pairs and save the result in EasyEdit's layout.

One implementation behind `SteerEditor.train`, `examples/run_split.py`, the hydra scripts, the
EasyEdit integration and `sharding`. The trainer only trains; saving, the loss logs, the
metadata and the resume state of multi-concept runs are written here, after each concept, so
an interrupted run loses at most the concept in progress. A resumed multi-concept run keeps the
finished concepts only when the run fingerprint recorded in `metadata.json` (hparams minus
`COSMETIC_HPARAMS`, each finished concept's pairs, the model's weights/dtype/device type and
tokenizer, the code's versions) equals this run's; otherwise it refuses, naming what differs. CAA (no training) is saved here too,
one stacked row per concept for multi-concept data.

The method directory is checked for writability and locked (`storage.units.DirectoryLock`) before any
compute, so an impossible output path or a second run writing the same directory fails at once.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from torch import nn

from .constants import PathLike
from .data import PolarityPair, group_by_concept
from .easyedit_layout import intervention_dir, layer_file
from .errors import EasyEditSplitError
from .interventions import DynamicWeightUpdate
from .registry import get_method
from .run_fingerprints import describe_differences, differences, json_ready, model_identity, versions
from .storage.files import atomic_write_text, check_writable, safe_torch_load
from .storage.payloads import payload_to_update
from .storage.units import (METADATA_FILE, DirectoryLock, intervention_metadata, read_finished_concepts, read_metadata,
                            save_interventions)
from .training import TrainingLog, concept_groups

logger = logging.getLogger(__name__)

FINGERPRINT_KEY = "run_fingerprint"
"""`metadata.json` key of a multi-concept run's fingerprint (what its finished concepts were made from)."""

# Keys that change no trained value: where files go, memory budgets, inference-only switches, the
# dataset's and model's names (their content is fingerprinted instead: rows and weights), the device
# string (its type is in the model identity) and `max_concepts` (which concepts, not how each is trained).
COSMETIC_HPARAMS = frozenset({
    "save_vectors", "steer_vector_output_dir", "loss_output_dir", "fast_path_memory_mb", "use_cache",
    "generate_orig_output", "save_activations", "vllm_enable", "vllm_gpu_memory_utilization", "vllm_max_model_len",
    "vllm_enforce_eager", "vllm_tensor_parallel_size", "vllm_pipeline_parallel_size", "device", "max_concepts",
    "steer_train_dataset", "model_name_or_path",
})


class ResumeMismatchError(EasyEditSplitError, ValueError):
    """A multi-concept run would resume from concepts made with other settings, data, model or code."""


def run_fingerprint(hparams: Any, groups: Mapping[int, Sequence[PolarityPair]], model: nn.Module,
                    tokenizer: Any = None) -> dict:
    """Everything a trained concept depends on: hparams (minus `COSMETIC_HPARAMS`), each concept's
    pairs (SHA-256 of their text), the model's content and tokenizer, and the code's versions."""
    hp = {k: v for k, v in json_ready(hparams.to_dict()).items() if k not in COSMETIC_HPARAMS}
    data = {}
    for cid, group in groups.items():
        rows = [[p.question, p.matching, p.not_matching, p.concept] for p in group]
        data[str(cid)] = hashlib.sha256(json.dumps(rows, ensure_ascii=False).encode()).hexdigest()
    return {"hparams": hp, "data": data, "model": model_identity(model, tokenizer), "versions": versions()}


def train_to_dir(hparams: Any, pairs: Sequence[PolarityPair], model: nn.Module, tokenizer: Any,
                 output_root: Optional[PathLike], dataset_name: str) -> tuple[Optional[Path], dict]:
    """Train (or compute) the method named by `hparams.alg_name` and save it in EasyEdit's layout.

    Returns the method directory (`<output_root>/<dataset>/<alg>_<method>`, None when not
    saving) and `{layer: update}` (`{layer: {concept_id: update}}` for multi-concept data).
    """
    spec = get_method(hparams.alg_name)
    method = hparams.intervention_method if spec.trained else "vector"
    save = hparams.save_vectors and output_root is not None
    directory = intervention_dir(output_root, dataset_name, hparams.alg_name, method) if save else None
    return directory, train_and_save(hparams, pairs, model, tokenizer, directory, dataset_name)


def train_and_save(hparams: Any, pairs: Sequence[PolarityPair], model: nn.Module, tokenizer: Any,
                   directory: Optional[PathLike], dataset_name: Optional[str] = None, progress: bool = True,
                   **metadata: Any) -> dict:
    """Train (or compute) `hparams.alg_name` and, unless `directory` is None, save it there.

    `directory` is the method directory itself (e.g. `<out>/<dataset>/spilt_vector`). A
    multi-concept run resumes: concepts listed in `train_state_layer_<L>.json` are read back,
    not retrained. `metadata` keys are added to `metadata.json`.
    """
    spec = get_method(hparams.alg_name)
    if directory is None:
        if getattr(hparams, "loss_output_dir", None):
            check_writable(hparams.loss_output_dir, "loss_output_dir")
        if not spec.trained:
            return _compute_and_save(spec.train_function(), hparams, pairs, model, tokenizer, None, dataset_name, metadata)
        return spec.train_function()(hparams, concept_groups(pairs, hparams), model, tokenizer, progress=progress,
                                     finished=None, on_trained=_loss_log_writer(hparams))
    directory = check_writable(Path(directory), "intervention directory")
    if getattr(hparams, "loss_output_dir", None):
        check_writable(hparams.loss_output_dir, "loss_output_dir")
    with DirectoryLock(directory):
        if not spec.trained:
            return _compute_and_save(spec.train_function(), hparams, pairs, model, tokenizer, directory, dataset_name, metadata)
        groups = concept_groups(pairs, hparams)  # once per run: the saver and the trainer share it
        saver = ConceptSaver(directory, hparams, groups, model, dataset_name, metadata, tokenizer)
        return spec.train_function()(hparams, groups, model, tokenizer, progress=progress,
                                     finished=saver.finished(), on_trained=saver)


def _write_loss_log(hparams: Any, layer: int, concept_id: int, log: TrainingLog) -> None:
    if getattr(hparams, "loss_output_dir", None):
        name = f"train_losses_{hparams.alg_name}_layer_{layer}_concept_{concept_id}.csv"
        atomic_write_text(Path(hparams.loss_output_dir) / name, log.to_csv())


def _loss_log_writer(hparams: Any):
    return lambda layer, concept_id, update, log: _write_loss_log(hparams, layer, concept_id, log)


class ConceptSaver:
    """The trainer's `on_trained` callback: saves each (layer, concept) as soon as it is trained.

    Single concept: `layer_<L>.pt` and `metadata.json` after each layer. Multi-concept: the
    concept's row (or entry) in the stacked `layer_<L>.pt`, then `metadata.json`, then the resume
    state `train_state_layer_<L>.json`. Each save is one `storage.units.save_interventions` unit,
    sealed by the manifest, so between concepts the directory loads with what is finished.
    `groups` is the trainer's grouping of the pairs (`training.concept_groups`).
    """

    def __init__(self, directory: Path, hparams: Any, groups: Mapping[int, Sequence[PolarityPair]], model: nn.Module,
                 dataset_name: Optional[str], extra: dict, tokenizer: Any = None) -> None:
        self.directory, self.hparams, self.model, self.dataset_name, self.extra = directory, hparams, model, dataset_name, extra
        self.multi_concept = len(groups) > 1
        self.fingerprint = run_fingerprint(hparams, groups, model, tokenizer) if self.multi_concept else None
        self.concept_names = {cid: group[0].concept for cid, group in groups.items()}
        self.saved: dict[int, dict[int, DynamicWeightUpdate]] = {}

    def finished(self) -> dict[int, dict[int, DynamicWeightUpdate]]:
        """Concepts an earlier run saved, `{layer: {concept_id: update}}` (multi-concept runs only)."""
        if not self.multi_concept:
            return {}
        done: dict[int, dict[int, DynamicWeightUpdate]] = {}
        states = {layer: read_finished_concepts(self.directory, layer) for layer in self.hparams.layers
                  if layer_file(self.directory, layer).exists()}
        if any(states.values()):
            self._check_fingerprint(sorted({c for concepts in states.values() for c in concepts}))
        for layer in self.hparams.layers:
            path = layer_file(self.directory, layer)
            concepts = read_finished_concepts(self.directory, layer) if path.exists() else []
            if concepts:
                payload = safe_torch_load(path)
                done[layer] = {cid: payload_to_update(payload, concept_id=cid, source=str(path)) for cid in concepts}
                logger.info("%s: concepts %s already trained (resume state); not retrained", path, concepts)
        self.saved = {layer: dict(updates) for layer, updates in done.items()}
        return done

    def _check_fingerprint(self, finished: list[int]) -> None:
        """Refuse to keep finished concepts made from other inputs than this run's (named)."""
        metadata_path = self.directory / METADATA_FILE
        todo = (f"train into a new output directory, or delete {self.directory} to train every concept again "
                "with these settings")
        before = read_metadata(self.directory).get(FINGERPRINT_KEY)
        if not isinstance(before, dict):
            raise ResumeMismatchError(f"{metadata_path}: concepts {finished} are finished, but no run fingerprint "
                                      f"records what they were made from (an older version or an edited file); {todo}")
        now = dict(self.fingerprint)
        # concepts only in one run (more or fewer concepts now) are not a difference; finished ones are
        kept = {str(c) for c in finished}
        now["data"] = {k: v for k, v in now["data"].items() if k in kept}
        before = {**before, "data": {k: v for k, v in dict(before.get("data") or {}).items() if k in kept}}
        if differences(before, now):
            raise ResumeMismatchError(f"{self.directory}: its finished concepts {finished} were made with other inputs "
                                      f"than this run ({describe_differences(before, now)}); {todo}")

    def __call__(self, layer: int, concept_id: int, update: DynamicWeightUpdate, log: TrainingLog) -> None:
        _write_loss_log(self.hparams, layer, concept_id, log)
        self.saved.setdefault(layer, {})[concept_id] = update
        if not self.multi_concept:
            updates = {saved_layer: concepts[concept_id] for saved_layer, concepts in self.saved.items()}
            save_interventions(self.directory, updates, self._metadata(updates))
            return
        finished = sorted(self.saved[layer])
        metadata = self._metadata(self.saved, concepts={str(c): self.concept_names[c] for c in finished})
        save_interventions(self.directory, {layer: self.saved[layer]}, metadata, layers=sorted(self.saved),
                           train_state={layer: finished}, alg_name=self.hparams.alg_name)

    def _metadata(self, updates: dict, **extra: Any) -> dict:
        if self.fingerprint is not None:
            extra[FINGERPRINT_KEY] = self.fingerprint
        return intervention_metadata(updates, alg_name=self.hparams.alg_name, hparams=self.hparams, model=self.model,
                                     dataset=self.dataset_name, **extra, **self.extra)


def _compute_and_save(train: Any, hparams: Any, pairs: Sequence[PolarityPair], model: nn.Module, tokenizer: Any,
                      directory: Optional[PathLike], dataset_name: Optional[str], extra: dict) -> dict:
    """A method without training (CAA): one result per concept, saved (stacked for multi-concept data)."""
    groups = group_by_concept(pairs)

    def metadata(updates: dict, **more: Any) -> dict:
        return intervention_metadata(updates, alg_name=hparams.alg_name, hparams=hparams, model=model,
                                     dataset=dataset_name, **more, **extra)

    if len(groups) == 1:
        updates = train(hparams, list(pairs), model, tokenizer)
        if directory is not None:
            save_interventions(directory, updates, metadata(updates))
        return updates
    result: dict = {layer: {} for layer in hparams.layers}
    for concept_id, group in groups.items():  # multi-concept CAA: one vector per concept, stacked rows
        for layer, update in train(hparams, group, model, tokenizer).items():
            result[layer][concept_id] = update
    if directory is not None:
        save_interventions(directory, result, metadata(result, concepts=sorted(groups)))
    return result
