"""Save and load interventions in EasyEdit's on-disk layout; a saved directory is one unit.

Layout: `<steer_vector_output_dir>/<dataset>/<alg>_<intervention_method>/layer_<L>.pt`
(CAA: `caa_vector/`). Payloads, as EasyEdit writes and reads them:
- vector: a tensor `[hidden]`, or `[n_concepts, hidden]` (row = concept id);
- lora: `{"lora_A", "lora_B", "r", "alpha", "intervention_components", "concept_id"}`;
- local_weight: `{"weight", "bias", "intervention_components", "concept_id"}`;
- multi-concept lora/local_weight: `{concept_id: payload}`.
Next to them `metadata.json` (model, layers, component, method, hparams, package version) and
`manifest.json`, both ignored by EasyEdit. The manifest is written first as "incomplete" and
rewritten last listing every layer file with its size and SHA-256: loaders load exactly what a
complete manifest lists, so a half-written, mixed or stale directory never loads. A directory
with neither metadata nor manifest is EasyEdit's own and loads by its file names. Writers hold
a lock file (`.easyedit_split.lock`, with the pid): a second writer is refused. See docs/storage.md.
Files are loaded with `torch.load(..., weights_only=True)`: loading never runs pickled code.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import re
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

import torch
from torch import nn

from . import __version__
from .constants import canonical_alg_name, easyedit_alg_dir_name
from .dataset_names import dataset_label
from .errors import EasyEditSplitError, StorageError
from .interventions import DynamicWeightUpdate, check_fits_model
from .json_values import json_text
from .models import hidden_size, num_layers

logger = logging.getLogger(__name__)

METADATA_FILE = "metadata.json"
MANIFEST_FILE = "manifest.json"
LOCK_FILE = ".easyedit_split.lock"
MANIFEST_FORMAT = "easyedit_split.manifest"
MANIFEST_VERSION = 1
STATE_FILE_PATTERN = "train_state_layer_{layer}.json"
SAVE_DELAY_ENV = "EASYEDIT_SPLIT_TEST_SAVE_DELAY"
"""Test hook: seconds to sleep before each layer file is written (the kill-while-saving test)."""
PathLike = Union[str, Path]

_LAYER_NAME = re.compile(r"^layer_(\d+)\.pt$")
_STATE_NAME = re.compile(r"^train_state_layer_(\d+)\.json$")
_WHAT_TO_DO = "re-run the training that writes it, or delete the directory"


def check_inside(root: PathLike, path: PathLike, what: str) -> Path:
    """`path` if it resolves inside `root`; else an error before anything is written.

    Names taken from data or arguments (a dataset called `../../x`, `some/dir/sub/..`) must not
    move a write out of the output directory the user chose.
    """
    root_resolved, resolved = Path(root).resolve(), Path(path).resolve()
    if resolved == root_resolved or root_resolved not in resolved.parents:
        raise StorageError(f"{path}: {what} would write outside the output directory {root} "
                           f"(resolves to {resolved}); use a plain name without '..' or '/'")
    return Path(path)


def intervention_dir(output_dir: PathLike, dataset: Optional[str], alg_name: str, intervention_method: str = "vector") -> Path:
    """EasyEdit's directory for one method's files: `<out>/<dataset>/<alg>_<method>` (CAA: `caa_vector`).

    The dataset name must keep the directory inside `output_dir` (no `..`, no absolute path).
    """
    alg = easyedit_alg_dir_name(alg_name)  # EasyEdit's spelling (`spilt`), so its appliers find the files
    leaf = "caa_vector" if alg == "caa" else f"{alg}_{intervention_method}"
    if dataset is not None and (not str(dataset).strip() or Path(str(dataset)).is_absolute()):
        raise StorageError(f"dataset name {dataset!r}: not usable as a directory name under {output_dir}")
    base = Path(output_dir) / dataset if dataset else Path(output_dir)
    directory = base / leaf
    if dataset:
        check_inside(output_dir, base, f"dataset name {dataset!r}")
    return directory


def layer_file(directory: PathLike, layer: int) -> Path:
    return Path(directory) / f"layer_{layer}.pt"


def check_writable(path: PathLike, what: str = "output directory") -> Path:
    """Fail now, before any compute, if `path` cannot become a writable directory.

    Walks up to the nearest existing ancestor: a regular file there, or an ancestor this process
    cannot write to, is an error naming it. Nothing is created.
    """
    path = Path(path)
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise StorageError(f"{path}: cannot be the {what}: {probe} is a file, not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise StorageError(f"{path}: cannot be the {what}: {probe} is not writable")
    return path


# ----------------------------------------------------------------------------- atomic writes


def _file_mode() -> int:
    """The mode a plain `open(..., "w")` would give under the current umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: PathLike, write: Any) -> Path:
    """Run `write(tmp_path)` on a temporary file beside `path`, then rename it onto `path`.

    The file gets the umask's mode (mkstemp alone would make it 0600). A temporary file left by
    a killed process is a hidden `.<name>.<random>.tmp`; loaders ignore it, writers delete it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, _file_mode())
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
    if not path.is_file():
        raise StorageError(f"{path}: no such intervention file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"GLOBAL ([\w.]+)", str(error))
        if found:
            raise StorageError(f"{path}: refused: the file carries pickled code or objects ({found.group(1)}), not only "
                               "tensors; intervention files are loaded weights-only, as plain tensors and dicts") from None
        raise StorageError(f"{path}: refused: not a plain weights-only torch file (a pickle with operations other "
                           "than tensors and dicts, which may carry code, or a truncated file)") from None
    except Exception as error:  # truncated zip archives, text files, directories
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise StorageError(f"{path}: not a readable torch file, it may be truncated ({first_line})") from None


# ----------------------------------------------------------------------------- locking


class DirectoryLock:
    """An exclusive lock on a method directory for one writer: `.easyedit_split.lock` holding the pid.

    Created with O_EXCL, so of two processes only one gets it; the other gets a `StorageError`
    naming the directory and the holder. A lock left by a process that no longer runs (killed)
    is taken over with a warning. Re-entrant within a process (nested saves of one run).
    """

    _held: dict[Path, int] = {}
    _guard = threading.Lock()

    def __init__(self, directory: PathLike) -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOCK_FILE

    def _key(self) -> Path:
        return self.directory.resolve()

    def acquire(self) -> "DirectoryLock":
        with self._guard:
            key = self._key()
            if self._held.get(key):
                self._held[key] += 1
                return self
            self.directory.mkdir(parents=True, exist_ok=True)
            for _ in range(2):
                try:
                    fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, _file_mode())
                except FileExistsError:
                    holder = lock_holder(self.directory)
                    if holder is not None and _pid_alive(holder):
                        raise StorageError(
                            f"{self.directory}: another process (pid {holder}) is writing this directory "
                            f"(lock file {self.path}); wait for it to finish or choose another output directory") from None
                    logger.warning("%s: removing the lock of pid %s, which no longer runs (an interrupted save)",
                                   self.directory, holder)
                    self.path.unlink(missing_ok=True)
                    continue
                with os.fdopen(fd, "w") as handle:
                    handle.write(f"{os.getpid()} {socket.gethostname()}\n")
                self._held[key] = 1
                return self
            raise StorageError(f"{self.directory}: could not take the lock file {self.path}; delete it if no run is writing here")

    def release(self) -> None:
        with self._guard:
            key = self._key()
            count = self._held.get(key, 0) - 1
            if count > 0:
                self._held[key] = count
                return
            self._held.pop(key, None)
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> "DirectoryLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def lock_holder(directory: PathLike) -> Optional[int]:
    """The pid in a directory's lock file (None without one, or when unreadable)."""
    try:
        return int((Path(directory) / LOCK_FILE).read_text(encoding="utf-8").split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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


def payload_method(payload: Any, source: str = "intervention") -> str:
    if isinstance(payload, torch.Tensor):
        return "vector"
    if _is_multi_concept_dict(payload):
        payload = next(iter(payload.values()))
    if isinstance(payload, dict) and "lora_A" in payload:
        return "lora"
    if isinstance(payload, dict) and "weight" in payload:
        return "local_weight"
    what = f"a dict with keys {sorted(map(str, payload))}" if isinstance(payload, dict) else f"a {type(payload).__name__}"
    raise StorageError(f"{source}: unrecognised intervention payload ({what}); expected a tensor [hidden] or "
                       "[n_concepts, hidden], a dict with lora_A/lora_B, or a dict with weight/bias")


def _check_tensor(value: Any, key: str, source: str) -> torch.Tensor:
    """A floating-point tensor with finite values, or an error naming the file and key."""
    if not isinstance(value, torch.Tensor):
        raise StorageError(f"{source}: '{key}' must be a tensor, got {type(value).__name__}")
    if not value.is_floating_point():
        raise StorageError(f"{source}: '{key}' has dtype {value.dtype}; steering tensors are floating point")
    if value.numel() == 0:
        raise StorageError(f"{source}: '{key}' is empty (shape {tuple(value.shape)})")
    if not bool(torch.isfinite(value).all()):
        bad = int((~torch.isfinite(value)).sum())
        raise StorageError(f"{source}: '{key}' holds {bad} non-finite values (nan or inf); the file cannot steer a model")
    return value.float() if value.dtype in (torch.float16, torch.bfloat16) else value


def payload_to_update(
    payload: Any, concept_id: int = 0, source: str = "intervention", component: Optional[str] = None
) -> DynamicWeightUpdate:
    """Turn an EasyEdit payload (any of the three forms, single or multi-concept) into an update.

    Tensors must be floating point and finite; every error names `source` (the file).
    """
    method = payload_method(payload, source)
    if method == "vector":
        tensor = payload
        if tensor.dim() == 2:
            if not 0 <= concept_id < tensor.shape[0]:
                raise StorageError(f"{source}: concept_id {concept_id} is outside the {tensor.shape[0]} stacked vectors")
            tensor = tensor[concept_id]
        if tensor.dim() != 1:
            raise StorageError(f"{source}: a vector must be [hidden] or [n_concepts, hidden], got {tuple(payload.shape)}")
        return DynamicWeightUpdate.from_vector(_check_tensor(tensor, "vector", source))
    if _is_multi_concept_dict(payload):
        if concept_id not in payload:
            raise StorageError(f"{source}: concept_id {concept_id} not found (has {sorted(map(str, payload))})")
        payload = payload[concept_id]
    required = ("lora_A", "lora_B") if method == "lora" else ("weight",)
    missing = [key for key in required if key not in payload]
    if missing:
        raise StorageError(f"{source}: {method} payload lacks keys {missing} (has {sorted(map(str, payload))})")
    part = component or payload.get("intervention_components", "mlp_mid")
    try:
        if method == "lora":
            return DynamicWeightUpdate.from_lora(_check_tensor(payload["lora_A"], "lora_A", source),
                                                 _check_tensor(payload["lora_B"], "lora_B", source),
                                                 component=part, alpha=payload.get("alpha"))
        bias = payload.get("bias")
        return DynamicWeightUpdate.from_local_weight(_check_tensor(payload["weight"], "weight", source),
                                                     None if bias is None else _check_tensor(bias, "bias", source),
                                                     component=part)
    except StorageError as error:
        if str(error).startswith(source):
            raise
        raise StorageError(f"{source}: {error}") from None
    except (ValueError, TypeError, RuntimeError, KeyError) as error:
        raise StorageError(f"{source}: not a usable {method} payload ({error})") from None


def stack_concept_payload(existing: Any, concept_id: int, update: DynamicWeightUpdate) -> Any:
    """`existing` (a stacked layer payload, or None) with `concept_id`'s update put in (vectors: its row)."""
    payload = update_to_payload(update, concept_id)
    if update.method == "vector":
        rows = existing if isinstance(existing, torch.Tensor) and existing.dim() == 2 else torch.zeros(0, payload.shape[0])
        if rows.shape[0] <= concept_id:
            rows = torch.cat([rows, torch.zeros(concept_id + 1 - rows.shape[0], payload.shape[0], dtype=rows.dtype)])
        rows = rows.clone()
        rows[concept_id] = payload
        return rows
    combined = dict(existing) if _is_multi_concept_dict(existing) else {}
    combined[int(concept_id)] = payload
    return combined


def payload_concept_count(payload: Any) -> int:
    """Concepts one layer payload holds: rows of a stacked vector, entries of a concept dict, else 1."""
    if isinstance(payload, torch.Tensor):
        return int(payload.shape[0]) if payload.dim() == 2 else 1
    return len(payload) if _is_multi_concept_dict(payload) else 1


# ----------------------------------------------------------------------------- metadata


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


# ----------------------------------------------------------------------------- writing a directory


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _save_delay() -> None:
    delay = os.environ.get(SAVE_DELAY_ENV)
    if delay:
        time.sleep(float(delay))


def _remove_stale_temporaries(directory: Path) -> None:
    for path in directory.glob(".*.tmp"):
        logger.info("%s: removing a temporary file left by an interrupted write", path)
        path.unlink(missing_ok=True)


def begin_directory_write(directory: PathLike, keep_layers: Optional[Sequence[int]] = None) -> Path:
    """Mark `directory` as being written (incomplete manifest), delete stale temporaries, and
    (with `keep_layers`) layer files and resume states of other layers. Call with the lock held."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(directory)
    atomic_write_json(directory / MANIFEST_FILE, {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION,
                                                  "complete": False, "writer_pid": os.getpid()})
    if keep_layers is not None:
        keep = {int(layer) for layer in keep_layers}
        for path in directory.iterdir():
            match = _LAYER_NAME.match(path.name) or _STATE_NAME.match(path.name)
            if match and int(match.group(1)) not in keep:
                logger.warning("%s: removed, left by an earlier run (this save writes layers %s)", path, sorted(keep))
                path.unlink()
    return directory


def finish_directory_write(directory: PathLike, layers: Sequence[int], **extra: Any) -> Path:
    """Write the complete manifest, last: the listed layer files (size, SHA-256) and concept count."""
    directory = Path(directory)
    files: dict[str, Any] = {}
    n_concepts = 0
    for layer in sorted(int(layer) for layer in layers):
        path = layer_file(directory, layer)
        files[path.name] = {"layer": layer, "bytes": path.stat().st_size, "sha256": _sha256(path)}
    meta_path = directory / METADATA_FILE
    if meta_path.exists():
        files[METADATA_FILE] = {"bytes": meta_path.stat().st_size, "sha256": _sha256(meta_path)}
    if "n_concepts" in extra:
        n_concepts = int(extra.pop("n_concepts"))
    manifest = {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "complete": True,
                "package_version": __version__, "layers": sorted(int(layer) for layer in layers),
                "n_concepts": n_concepts, "files": files, **extra}
    return atomic_write_json(directory / MANIFEST_FILE, manifest)


def write_directory(directory: PathLike, payloads: Mapping[int, Any], metadata: Optional[dict] = None,
                    layers: Optional[Sequence[int]] = None, train_state: Optional[Mapping[int, Sequence[int]]] = None,
                    alg_name: Optional[str] = None) -> list[Path]:
    """Write a method directory as one unit: lock, incomplete manifest, the `payloads`' layer files,
    metadata, resume states, then the complete manifest.

    `layers` (default: the payloads' layers) is what the directory holds afterwards: layer files
    of other layers are deleted, and only payloads that changed need to be passed.
    """
    directory = Path(directory)
    layers = sorted(int(layer) for layer in (layers if layers is not None else payloads))
    written: list[Path] = []
    with DirectoryLock(directory):
        try:
            previous = read_manifest(directory)
        except StorageError:
            previous = None
        begin_directory_write(directory, keep_layers=layers)
        for layer, payload in payloads.items():
            _save_delay()
            written.append(atomic_torch_save(payload, layer_file(directory, layer)))
        if metadata is not None:
            written.append(atomic_write_json(directory / METADATA_FILE, metadata))
        for layer, concepts in (train_state or {}).items():
            written.append(write_train_state(directory, layer, concepts, alg_name=alg_name))
        counts = [payload_concept_count(payload) for payload in payloads.values()]
        if previous is not None and previous.get("complete") and set(payloads) != set(layers):
            counts.append(int(previous.get("n_concepts", 0) or 0))  # layers not rewritten keep their count
        written.append(finish_directory_write(directory, layers, n_concepts=max(counts, default=0)))
    return written


def save_interventions(
    directory: PathLike, updates: Mapping[int, DynamicWeightUpdate], metadata: Optional[dict] = None, concept_id: int = 0
) -> list[Path]:
    """Write one `layer_<L>.pt` per update, `metadata.json` and the manifest, as one unit.

    `metadata` (usually built by `intervention_metadata`) goes on top of `intervention_metadata(updates)`.
    Layer files of other layers left in `directory` by an earlier run are deleted.
    """
    payloads = {int(layer): update_to_payload(u, concept_id) for layer, u in updates.items()}
    return write_directory(directory, payloads, {**intervention_metadata(updates), **(metadata or {})})


def save_concept_update(directory: PathLike, layer: int, concept_id: int, update: DynamicWeightUpdate) -> Path:
    """Add one concept's update to the stacked multi-concept file (vectors: row `concept_id`) and re-seal
    the manifest; the directory's other layer files are kept."""
    directory = Path(directory)
    with DirectoryLock(directory):
        path = layer_file(directory, layer)
        existing = safe_torch_load(path) if path.exists() else None
        layers = sorted(set(listed_or_present_layers(directory)) | {int(layer)})
        write_directory(directory, {int(layer): stack_concept_payload(existing, concept_id, update)}, layers=layers)
    return path


def listed_or_present_layers(directory: PathLike) -> list[int]:
    """Layers a directory's complete manifest lists, else the layer files present (for writers extending it)."""
    manifest = read_manifest(directory)
    if manifest is not None and manifest.get("complete"):
        return [int(layer) for layer in manifest.get("layers", [])]
    return layer_files(directory, strict=False)


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
    except (ValueError, AttributeError, TypeError) as error:
        raise StorageError(f"{path}: unreadable resume state ({error}); delete it to retrain every concept") from error


# ----------------------------------------------------------------------------- reading a directory


def _read_json_object(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise StorageError(f"{path}: malformed JSON at line {error.lineno}: {error.msg}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise StorageError(f"{path}: unreadable {what} ({error})") from None
    if not isinstance(data, dict):
        raise StorageError(f"{path}: the {what} must be a JSON object, got {type(data).__name__}")
    return data


def read_metadata(directory: PathLike) -> dict:
    path = Path(directory) / METADATA_FILE
    if not path.exists():
        return {}
    return _read_json_object(path, "metadata")


def read_manifest(directory: PathLike) -> Optional[dict]:
    """The directory's manifest (None without one)."""
    path = Path(directory) / MANIFEST_FILE
    if not path.exists():
        return None
    return _read_json_object(path, "manifest")


def layer_files(directory: PathLike, strict: bool = True) -> list[int]:
    """Layers of the `layer_<L>.pt` files present; with `strict`, any other `layer_*.pt` name is an error."""
    directory = Path(directory)
    layers = []
    for path in directory.glob("layer_*.pt"):
        match = _LAYER_NAME.match(path.name)
        if match:
            layers.append(int(match.group(1)))
        elif strict:
            raise StorageError(f"{directory}: '{path.name}' is not a layer file name layer_<L>.pt with a layer L >= 0; "
                               "rename or delete it")
    return sorted(layers)


def listed_layers(directory: PathLike, allow_unmanifested: bool = False, verify: bool = False) -> list[int]:
    """The layers that may be loaded from `directory`, after checking it is one complete unit.

    - with a manifest: it must be complete, every `layer_<L>.pt` present must be listed, and (with
      `verify`) every listed file must have its recorded size and SHA-256;
    - without one: a directory with neither `metadata.json` nor a lock file is EasyEdit's own and
      its layer files are listed; anything else of ours without a complete manifest is refused
      unless `allow_unmanifested` (then it is read as EasyEdit's).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise StorageError(f"{directory}: no such intervention directory")
    holder = lock_holder(directory) if (directory / LOCK_FILE).exists() else None
    if (directory / LOCK_FILE).exists() and holder is not None and holder != os.getpid() and _pid_alive(holder):
        raise StorageError(f"{directory}: process {holder} is still writing it (lock file {LOCK_FILE}); load it when that run has finished")
    manifest = read_manifest(directory)
    present = layer_files(directory, strict=True)
    if manifest is None:
        ours = (directory / METADATA_FILE).exists() or (directory / LOCK_FILE).exists()
        if ours and not allow_unmanifested:
            reason = ("a save was interrupted (its lock file is still there)" if (directory / LOCK_FILE).exists()
                      else "it was not completely saved, or was written before manifests existed")
            raise StorageError(f"{directory}: has {METADATA_FILE} but no {MANIFEST_FILE}: {reason}. Re-run the training "
                               "that writes it, or delete the directory; to read it anyway as EasyEdit's files, use "
                               "allow_unmanifested=True (command line: --easyedit-dir)")
        if not present:
            raise StorageError(f"{directory}: holds no layer_<L>.pt files")
        return present
    source = directory / MANIFEST_FILE
    if manifest.get("format") != MANIFEST_FORMAT:
        raise StorageError(f"{source}: not an easyedit_split manifest (format {manifest.get('format')!r})")
    if manifest.get("complete") is not True:
        raise StorageError(f"{directory}: incomplete ({MANIFEST_FILE} is marked incomplete): a save was interrupted "
                           f"and the files may be half written; {_WHAT_TO_DO}")
    if not isinstance(manifest.get("files"), dict):
        raise StorageError(f"{source}: 'files' must map file names to their size and SHA-256")
    try:
        layers = sorted(int(layer) for layer in manifest.get("layers", []))
    except (TypeError, ValueError):
        raise StorageError(f"{source}: 'layers' must be a list of integers, got {manifest.get('layers')!r}") from None
    unlisted = sorted(set(present) - set(layers))
    if unlisted:
        names = ", ".join(layer_file(directory, layer).name for layer in unlisted)
        raise StorageError(f"{directory}: {names} not listed in {MANIFEST_FILE} (left by another run?); delete "
                           f"{'them' if len(unlisted) > 1 else 'it'} or {_WHAT_TO_DO}")
    for layer in layers:
        path = layer_file(directory, layer)
        entry = manifest["files"].get(path.name)
        if not path.is_file():
            raise StorageError(f"{path}: missing, though {MANIFEST_FILE} lists it; {_WHAT_TO_DO}")
        if not isinstance(entry, dict):
            raise StorageError(f"{source}: no entry for {path.name}")
        if entry.get("bytes") is not None and path.stat().st_size != entry["bytes"]:
            raise StorageError(f"{path}: {path.stat().st_size} bytes, but {MANIFEST_FILE} recorded {entry['bytes']} "
                               f"(changed or truncated since it was saved); {_WHAT_TO_DO}")
        if verify and entry.get("sha256") and _sha256(path) != entry["sha256"]:
            raise StorageError(f"{path}: its SHA-256 differs from {MANIFEST_FILE} (changed since it was saved); {_WHAT_TO_DO}")
    return layers


def check_model_matches(metadata: dict, model: nn.Module, source: str) -> None:
    """Metadata written for another model is an error, not a silent mis-application."""
    try:
        expected = metadata.get("hidden_size")
        expected = int(expected) if expected is not None else None
        layers = metadata.get("num_layers")
        layers = int(layers) if layers is not None else None
    except (TypeError, ValueError):
        raise StorageError(f"{source}: hidden_size/num_layers in {METADATA_FILE} are not integers") from None
    if expected is not None and expected != hidden_size(model):
        raise StorageError(
            f"{source}: written for a model with hidden size {expected} ({metadata.get('model', '?')}), "
            f"but this model has hidden size {hidden_size(model)}"
        )
    if layers is not None and layers != num_layers(model):
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
    allow_unmanifested: bool = False,
) -> dict[int, DynamicWeightUpdate]:
    """Load the layers (all, or `layers`) a directory's manifest lists (EasyEdit's directories: its files).

    The directory must be one complete unit (see `listed_layers`). With `model`, shapes and
    metadata are checked against it. `intervention_method`, when given, must match the files.
    """
    directory = Path(directory)
    listed = listed_layers(directory, allow_unmanifested=allow_unmanifested, verify=True)
    if concept_id < 0:
        raise StorageError(f"{directory}: concept_id must be >= 0, got {concept_id}")
    wanted = list(layers) if layers is not None else listed
    if not wanted:
        raise StorageError(f"{directory}: holds no layer_<L>.pt files")
    metadata = read_metadata(directory)
    if model is not None:
        check_model_matches(metadata, model, str(directory))
    updates: dict[int, DynamicWeightUpdate] = {}
    for layer in wanted:
        path = layer_file(directory, layer)
        if layer not in listed:
            raise StorageError(f"{path}: missing: layer {layer} is not in this directory (it holds layers {listed})")
        if model is not None and not 0 <= int(layer) < num_layers(model):
            raise StorageError(f"{path}: layer {layer} is outside the model's {num_layers(model)} layers")
        payload = safe_torch_load(path)
        update = payload_to_update(payload, concept_id=concept_id, source=str(path))
        if intervention_method and update.method != intervention_method:
            raise StorageError(f"{path}: holds a '{update.method}' intervention, but intervention_method is '{intervention_method}'")
        if model is not None:
            try:
                check_fits_model(update, model, layer, source=str(path))
            except (EasyEditSplitError, ValueError, RuntimeError) as error:
                if str(error).startswith(str(path)):
                    raise
                raise StorageError(f"{path}: {error}") from None
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
