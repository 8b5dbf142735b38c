"""Save and load interventions in EasyEdit's on-disk layout; atomic writes, safe loads.

Layout: `<steer_vector_output_dir>/<dataset>/<alg>_<intervention_method>/layer_<L>.pt`
(CAA: `caa_vector/`). Payloads, as EasyEdit writes and reads them:
- vector: a tensor `[hidden]`, or `[n_concepts, hidden]` (row = concept id);
- lora: `{"lora_A", "lora_B", "r", "alpha", "intervention_components", "concept_id"}`;
- local_weight: `{"weight", "bias", "intervention_components", "concept_id"}`;
- multi-concept lora/local_weight: `{concept_id: payload}`.
Next to them `metadata.json` (model, layers, component, method, hparams, package version),
which EasyEdit ignores. Files are loaded with `torch.load(..., weights_only=True)`: loading a
steering file never runs pickled code.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import torch
from torch import nn

from . import __version__
from .constants import canonical_alg_name, easyedit_alg_dir_name
from .dataset_names import dataset_label
from .errors import StorageError
from .interventions import DynamicWeightUpdate, check_fits_model
from .json_values import json_text
from .models import hidden_size, num_layers

logger = logging.getLogger(__name__)

METADATA_FILE = "metadata.json"
STATE_FILE_PATTERN = "train_state_layer_{layer}.json"
PathLike = Union[str, Path]


def intervention_dir(output_dir: PathLike, dataset: Optional[str], alg_name: str, intervention_method: str = "vector") -> Path:
    """EasyEdit's directory for one method's files: `<out>/<dataset>/<alg>_<method>` (CAA: `caa_vector`)."""
    alg = easyedit_alg_dir_name(alg_name)  # EasyEdit's spelling (`spilt`), so its appliers find the files
    leaf = "caa_vector" if alg == "caa" else f"{alg}_{intervention_method}"
    base = Path(output_dir) / dataset if dataset else Path(output_dir)
    return base / leaf


def layer_file(directory: PathLike, layer: int) -> Path:
    return Path(directory) / f"layer_{layer}.pt"


# ----------------------------------------------------------------------------- atomic writes


def atomic_write(path: PathLike, write: Any) -> Path:
    """Run `write(tmp_path)` on a temporary file beside `path`, then rename it onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def atomic_torch_save(obj: Any, path: PathLike) -> Path:
    """`torch.save` to a temporary file in the same directory, then rename: never half-written."""
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def atomic_write_text(path: PathLike, text: str) -> Path:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)

    return atomic_write(path, write)


def atomic_write_json(path: PathLike, data: Any) -> Path:
    """Strict JSON (NaN/inf become null with a `<key>_null_reason`; see json_values), written atomically."""
    return atomic_write_text(path, json_text(data) + "\n")


def safe_torch_load(path: PathLike) -> Any:
    """Load a steering file without unpickling code; errors name the file."""
    path = Path(path)
    if not path.exists():
        raise StorageError(f"{path}: no such intervention file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle errors, truncated files
        raise StorageError(f"{path}: cannot be loaded as a weights-only torch file ({error})") from error


# ----------------------------------------------------------------------------- payloads


def update_to_payload(update: DynamicWeightUpdate, concept_id: int = 0) -> Any:
    """The EasyEdit payload for one update."""
    if update.method == "vector":
        return update.bias.detach().cpu().clone()
    if update.method == "lora":
        return {
            "lora_A": update.lora_A.detach().cpu().clone(),
            "lora_B": update.lora_B.detach().cpu().clone(),
            "r": int(update.rank),
            "alpha": update.alpha if update.alpha is not None else int(update.rank),
            "intervention_components": update.component,
            "concept_id": int(concept_id),
        }
    return {
        "weight": update.weight.detach().cpu().clone(),
        "bias": update.bias.detach().cpu().clone(),
        "intervention_components": update.component,
        "concept_id": int(concept_id),
    }


def _is_multi_concept_dict(payload: Any) -> bool:
    return isinstance(payload, dict) and bool(payload) and all(isinstance(v, dict) for v in payload.values())


def payload_method(payload: Any) -> str:
    if isinstance(payload, torch.Tensor):
        return "vector"
    if _is_multi_concept_dict(payload):
        payload = next(iter(payload.values()))
    if isinstance(payload, dict) and "lora_A" in payload:
        return "lora"
    if isinstance(payload, dict) and "weight" in payload:
        return "local_weight"
    raise StorageError(f"unrecognised intervention payload of type {type(payload).__name__}")


def payload_to_update(
    payload: Any, concept_id: int = 0, source: str = "intervention", component: Optional[str] = None
) -> DynamicWeightUpdate:
    """Turn an EasyEdit payload (any of the three forms, single or multi-concept) into an update."""
    method = payload_method(payload)
    if method == "vector":
        tensor = payload
        if tensor.dim() == 2:
            if not 0 <= concept_id < tensor.shape[0]:
                raise StorageError(f"{source}: concept_id {concept_id} is outside the {tensor.shape[0]} stacked vectors")
            tensor = tensor[concept_id]
        if tensor.dim() != 1:
            raise StorageError(f"{source}: a vector must be [hidden] or [n_concepts, hidden], got {tuple(payload.shape)}")
        return DynamicWeightUpdate.from_vector(tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor)
    if _is_multi_concept_dict(payload):
        if concept_id not in payload:
            raise StorageError(f"{source}: concept_id {concept_id} not found (has {sorted(payload)})")
        payload = payload[concept_id]
    required = ("lora_A", "lora_B") if method == "lora" else ("weight",)
    missing = [key for key in required if key not in payload]
    if missing:
        raise StorageError(f"{source}: {method} payload lacks keys {missing} (has {sorted(payload)})")
    part = component or payload.get("intervention_components", "mlp_mid")
    if method == "lora":
        update = DynamicWeightUpdate.from_lora(payload["lora_A"], payload["lora_B"], component=part, alpha=payload.get("alpha"))
    else:
        update = DynamicWeightUpdate.from_local_weight(payload["weight"], payload.get("bias"), component=part)
    return update


# ----------------------------------------------------------------------------- directories


def intervention_metadata(
    updates: Mapping[int, Any],
    *,
    alg_name: Optional[str] = None,
    hparams: Any = None,
    model: Optional[nn.Module] = None,
    dataset: Optional[str] = None,
    **extra: Any,
) -> dict:
    """The one `metadata.json` builder: what a method directory holds and what it was made from.

    `updates` maps layer -> update (or, multi-concept, layer -> {concept_id: update}). With
    `model`, its sizes are recorded so `check_model_matches` can refuse the files on another
    model; with `hparams`, the whole configuration. `extra` keys are added last.
    """
    first = next(iter(updates.values()))
    if isinstance(first, Mapping):
        first = next(iter(first.values()))
    meta: dict[str, Any] = {
        "package": "easyedit_split",
        "package_version": __version__,
        "layers": sorted(int(layer) for layer in updates),
        "intervention_method": first.method,
        "intervention_components": first.component,
    }
    if alg_name is not None:
        meta["alg_name"] = canonical_alg_name(alg_name)
    if dataset is not None:
        meta["dataset"] = dataset_label(dataset)
    if hparams is not None:
        meta["hparams"] = hparams.to_dict()
    if model is not None:
        config = getattr(model, "config", None)
        named = hparams.model_name_or_path if hparams is not None else None
        meta.update({"model": named or getattr(config, "_name_or_path", None), "model_type": getattr(config, "model_type", None),
                     "hidden_size": hidden_size(model), "num_layers": num_layers(model)})
    meta.update(extra)
    return meta


def save_interventions(
    directory: PathLike, updates: Mapping[int, DynamicWeightUpdate], metadata: Optional[dict] = None, concept_id: int = 0
) -> list[Path]:
    """Write one `layer_<L>.pt` per update plus `metadata.json`, each atomically.

    `metadata` (usually built by `intervention_metadata`) goes on top of `intervention_metadata(updates)`.
    """
    directory = Path(directory)
    written = [atomic_torch_save(update_to_payload(u, concept_id), layer_file(directory, layer)) for layer, u in updates.items()]
    written.append(atomic_write_json(directory / METADATA_FILE, {**intervention_metadata(updates), **(metadata or {})}))
    return written


def save_concept_update(directory: PathLike, layer: int, concept_id: int, update: DynamicWeightUpdate) -> Path:
    """Add one concept's update to the stacked multi-concept file (vectors: row `concept_id`)."""
    path = layer_file(directory, layer)
    existing = safe_torch_load(path) if path.exists() else None
    payload = update_to_payload(update, concept_id)
    if update.method == "vector":
        rows = existing if isinstance(existing, torch.Tensor) and existing.dim() == 2 else torch.zeros(0, payload.shape[0])
        if rows.shape[0] <= concept_id:
            rows = torch.cat([rows, torch.zeros(concept_id + 1 - rows.shape[0], payload.shape[0], dtype=rows.dtype)])
        rows = rows.clone()
        rows[concept_id] = payload
        combined: Any = rows
    else:
        combined = dict(existing) if _is_multi_concept_dict(existing) else {}
        combined[int(concept_id)] = payload
    return atomic_torch_save(combined, path)


def train_state_file(directory: PathLike, layer: int) -> Path:
    """The resume state of a multi-concept run at `layer`: which concepts are already in `layer_<L>.pt`."""
    return Path(directory) / STATE_FILE_PATTERN.format(layer=layer)


def write_train_state(directory: PathLike, layer: int, finished_concepts: Sequence[int], alg_name: Optional[str] = None) -> Path:
    state: dict[str, Any] = {"layer": int(layer), "finished_concepts": sorted(int(c) for c in finished_concepts)}
    if alg_name is not None:
        state["alg_name"] = alg_name
    return atomic_write_json(train_state_file(directory, layer), state)


def read_finished_concepts(directory: PathLike, layer: int) -> list[int]:
    """Concepts a previous run finished at `layer` (empty without a state file)."""
    path = train_state_file(directory, layer)
    if not path.exists():
        return []
    try:
        return [int(c) for c in json.loads(path.read_text(encoding="utf-8")).get("finished_concepts", [])]
    except (ValueError, AttributeError) as error:
        raise StorageError(f"{path}: unreadable resume state ({error}); delete it to retrain every concept") from error


def read_metadata(directory: PathLike) -> dict:
    path = Path(directory) / METADATA_FILE
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise StorageError(f"{path}: malformed JSON at line {error.lineno}: {error.msg}") from error


def available_layers(directory: PathLike) -> list[int]:
    layers = []
    for path in Path(directory).glob("layer_*.pt"):
        try:
            layers.append(int(path.stem.split("_", 1)[1]))
        except ValueError:
            continue
    return sorted(layers)


def check_model_matches(metadata: dict, model: nn.Module, source: str) -> None:
    """Metadata written for another model is an error, not a silent mis-application."""
    expected = metadata.get("hidden_size")
    if expected is not None and int(expected) != hidden_size(model):
        raise StorageError(
            f"{source}: written for a model with hidden size {expected} ({metadata.get('model', '?')}), "
            f"but this model has hidden size {hidden_size(model)}"
        )
    layers = metadata.get("num_layers")
    if layers is not None and int(layers) != num_layers(model):
        raise StorageError(
            f"{source}: written for a model with {layers} layers ({metadata.get('model', '?')}), "
            f"but this model has {num_layers(model)}"
        )


def load_interventions(
    directory: PathLike,
    layers: Optional[list[int]] = None,
    concept_id: int = 0,
    model: Optional[nn.Module] = None,
    intervention_method: Optional[str] = None,
) -> dict[int, DynamicWeightUpdate]:
    """Load `layer_<L>.pt` files (all, or `layers`) from an EasyEdit-layout directory.

    With `model`, shapes and metadata are checked against it. `intervention_method`, when
    given, must match what the files hold.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise StorageError(f"{directory}: no such intervention directory")
    wanted = list(layers) if layers is not None else available_layers(directory)
    if not wanted:
        raise StorageError(f"{directory}: holds no layer_<L>.pt files")
    metadata = read_metadata(directory)
    if model is not None:
        check_model_matches(metadata, model, str(directory))
    updates: dict[int, DynamicWeightUpdate] = {}
    for layer in wanted:
        path = layer_file(directory, layer)
        if not path.exists():
            raise StorageError(f"{path}: missing (the directory has layers {available_layers(directory)})")
        payload = safe_torch_load(path)
        update = payload_to_update(payload, concept_id=concept_id, source=str(path))
        if intervention_method and update.method != intervention_method:
            raise StorageError(f"{path}: holds a '{update.method}' intervention, but intervention_method is '{intervention_method}'")
        if model is not None:
            check_fits_model(update, model, layer, source=str(path))
        updates[layer] = update
    return updates


# ----------------------------------------------------------------------------- EasyEdit's experiment tree
# Where EasyEdit's `examples/run_SPILT.py` keeps hparams and writes results, so that the pipeline
# (`integrations.pipeline`, `examples/run_split.py`) reads and writes the same places:
#
#     vectors/<model>/<method>/<dataset>/<method>_<intervention>/layer_<L>.pt         (CAA: caa_vector/)
#     generation/<model>/<method>/<dataset>/<method>_<intervention>/m<m>/<data>_results.json
#     vectors/<model>/get_sft_loss/<method>/<dataset>/<method>_<intervention>/
#         <intervention>_<method>_m<m>_<winning_only|losing_only>/train_losses.csv
#
# <method> is EasyEdit's directory name (`constants.easyedit_alg_dir_name`: SPLIT is `spilt`).
# (Imports kept here, with this appended section, so parallel edits of the file header merge cleanly.)
from typing import Iterable  # noqa: E402

from .constants import easyedit_alg_dir_name  # noqa: E402

EASYEDIT_EXPERIMENT_DIR = Path("hparams/Steer/experiment_hparams") / f"{easyedit_alg_dir_name('split')}_experiment"
"""EasyEdit's hparams tree of the SPLIT experiments, relative to its checkout."""
LOSS_CSV_NAME = "train_losses.csv"
PER_EXAMPLE_CSV_NAME = "per_example_nll.csv"


def vector_subdir(method: str, intervention_method: str) -> str:
    """`<method>_<intervention>`, or `caa_vector` for CAA (EasyEdit's names)."""
    method = easyedit_alg_dir_name(method)
    return "caa_vector" if method == "caa" else f"{method}_{intervention_method}"


def experiment_vectors_dir(output_root: PathLike, model_name: str, method: str, dataset: str, intervention_method: str) -> Path:
    """`vectors/<model>/<method>/<dataset>/<method>_<intervention>/`: where the generate step writes."""
    method = easyedit_alg_dir_name(method)
    return Path(output_root) / "vectors" / model_name / method / dataset / vector_subdir(method, intervention_method)


def experiment_generation_dir(output_root: PathLike, model_name: str, method: str, dataset: str, intervention_method: str,
                              multiplier: float) -> Path:
    """`generation/<model>/<method>/<dataset>/<method>_<intervention>/m<m>/`: where the apply step writes."""
    method = easyedit_alg_dir_name(method)
    return (Path(output_root) / "generation" / model_name / method / dataset / f"{method}_{intervention_method}"
            / f"m{multiplier}")


def loss_output_dir(output_root: PathLike, model_name: str, method: str, dataset: str, intervention_method: str,
                    multiplier: float, preference_type: str) -> Path:
    """`vectors/<model>/get_sft_loss/.../<intervention>_<method>_m<m>_<preference>/`: where the loss step writes."""
    method = easyedit_alg_dir_name(method)
    leaf = f"{intervention_method}_{method}_m{multiplier}_{preference_type}"
    return Path(output_root) / "vectors" / model_name / "get_sft_loss" / method / dataset / f"{method}_{intervention_method}" / leaf


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
    method = easyedit_alg_dir_name(method)
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
    """The apply file for (dataset, model, method): `apply_<method>.yaml` or `apply.yaml`."""
    method = easyedit_alg_dir_name(method)
    return _first_existing(
        root / dataset / model_name / method / name
        for root in hparams_roots(base_dir) for name in (f"apply_{method}.yaml", "apply.yaml")
    )


def find_loss_hparams(base_dir: PathLike, dataset: str, model_name: str) -> Optional[Path]:
    """EasyEdit's SFT loss-mode file, `sft/generate_sft_loss.yaml`."""
    return _first_existing(root / dataset / model_name / "sft" / "generate_sft_loss.yaml" for root in hparams_roots(base_dir))
