"""A saved method directory is one unit: its layer files, metadata, manifest, lock and resume states.

Layout (EasyEdit's, see `easyedit_layout`): `layer_<L>.pt` files (payloads: `storage.payloads`), and
next to them `metadata.json` (model, layers, component, method, hparams, package version) and
`manifest.json`, both ignored by EasyEdit. A save stages the whole new unit beside the directory,
the manifest last, listing every file with its size and SHA-256, and swaps it in
(`storage.staging`): an interrupted save leaves the previous unit, and loaders load exactly what
a complete manifest lists after checking every checksum, so a half-written, mixed, edited or stale
directory never loads. A directory with neither metadata nor manifest is EasyEdit's own and loads
by its file names. Writers hold a lock file (`.easyedit_split.lock`, with the pid): a second
writer is refused. Files the package did not write are never replaced. See docs/storage.md.

`save_interventions` is the one writer of saved results (single concept or stacked concepts);
`load_interventions` the one reader. Files are loaded weights-only: loading never runs pickled code.
"""
from __future__ import annotations

import json
import logging
import os
import re
import socket
import threading
import time
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

from torch import nn

from .. import __version__
from ..constants import PathLike, canonical_alg_name
from ..easyedit_layout import LAYER_FILE_NAME, dataset_label, layer_file
from ..errors import EasyEditSplitError, StorageError
from ..interventions import DynamicWeightUpdate, check_fits_model
from ..models import WEIGHT_OVERRIDE_ATTR, hidden_size, num_layers
from .files import atomic_write_json, file_mode, file_sha256, safe_torch_load
from .payloads import (is_multi_concept_dict, payload_concept_count, payload_to_update, stack_concept_payload,
                       update_to_payload)
from .staging import foreign_reserved, link_into, no_space, remove_stale_copies, remove_unit_copy, staging_dir, swap_in

logger = logging.getLogger(__name__)

METADATA_FILE = "metadata.json"
MANIFEST_FILE = "manifest.json"
LOCK_FILE = ".easyedit_split.lock"
MANIFEST_FORMAT = "easyedit_split.manifest"
MANIFEST_VERSION = 1
STATE_FILE_PATTERN = "train_state_layer_{layer}.json"
SAVE_DELAY_ENV = "EASYEDIT_SPLIT_TEST_SAVE_DELAY"
"""Test hook: seconds to sleep before each layer file is written (the kill-while-saving test)."""

Updates = Mapping[int, Union[DynamicWeightUpdate, Mapping[int, DynamicWeightUpdate]]]
"""What the writer saves: `{layer: update}` (one concept) or `{layer: {concept_id: update}}` (stacked concepts)."""

_STATE_NAME = re.compile(r"^train_state_layer_(\d+)\.json$")
_WHAT_TO_DO = "re-run the training that writes it, or delete the directory"


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
                    fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, file_mode())
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
        override = getattr(config, WEIGHT_OVERRIDE_ATTR, None)
        if override:  # the weights were not the named model's: say which file replaced them
            meta["weight_override"] = override
    meta.update(extra)
    return meta


# ----------------------------------------------------------------------------- writing a directory


def _save_delay() -> None:
    delay = os.environ.get(SAVE_DELAY_ENV)
    if delay:
        time.sleep(float(delay))


def _remove_stale_temporaries(directory: Path) -> None:
    for path in directory.glob(".*.tmp"):
        logger.info("%s: removing a temporary file left by an interrupted write", path)
        path.unlink(missing_ok=True)


def finish_directory_write(directory: PathLike, layers: Sequence[int], **extra: Any) -> Path:
    """Write the complete manifest, last: every file of the unit (size, SHA-256) and the concept count."""
    directory = Path(directory)
    files: dict[str, Any] = {}
    n_concepts = 0
    for layer in sorted(int(layer) for layer in layers):
        path = layer_file(directory, layer)
        files[path.name] = {"layer": layer, "bytes": path.stat().st_size, "sha256": file_sha256(path)}
        state = train_state_file(directory, layer)
        if state.exists():
            files[state.name] = {"layer": layer, "bytes": state.stat().st_size, "sha256": file_sha256(state)}
    meta_path = directory / METADATA_FILE
    if meta_path.exists():
        files[METADATA_FILE] = {"bytes": meta_path.stat().st_size, "sha256": file_sha256(meta_path)}
    if "n_concepts" in extra:
        n_concepts = int(extra.pop("n_concepts"))
    manifest = {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "complete": True,
                "package_version": __version__, "layers": sorted(int(layer) for layer in layers),
                "n_concepts": n_concepts, "files": files, **extra}
    return atomic_write_json(directory / MANIFEST_FILE, manifest)


def package_files(directory: Path, previous: Optional[dict]) -> set[str]:
    """Names in `directory` this package wrote, and so may replace: what the previous complete manifest lists
    with the bytes it records (and, for manifests older than resume states in the manifest, the resume states of its layers), the
    manifest, the lock, and a `metadata.json` that says it is ours when there is no complete manifest."""
    ours = {LOCK_FILE}
    if previous is not None and previous.get("format") == MANIFEST_FORMAT:
        ours.add(MANIFEST_FILE)
        if previous.get("complete") is True and isinstance(previous.get("files"), dict):
            for name, entry in previous["files"].items():  # a listed file edited since is no longer ours
                path = directory / str(name)
                if not path.is_file() or (isinstance(entry, dict) and entry.get("sha256") == file_sha256(path)):
                    ours.add(str(name))
            for layer in previous.get("layers") or []:
                if isinstance(layer, int) and layer_file(directory, layer).name in previous["files"]:
                    ours.add(train_state_file(directory, layer).name)
    if METADATA_FILE not in ours and (directory / METADATA_FILE).is_file():
        try:
            if json.loads((directory / METADATA_FILE).read_text(encoding="utf-8")).get("package") == "easyedit_split":
                ours.add(METADATA_FILE)
        except (OSError, ValueError, AttributeError):
            pass
    return ours


def _refuse_foreign(directory: Path, names: Sequence[str]) -> None:
    listed = ", ".join(str(directory / name) for name in names)
    raise StorageError(f"{listed}: not written by easyedit_split (no complete {MANIFEST_FILE} of ours lists "
                       f"{'them' if len(names) > 1 else 'it'}), and a save here would replace or be confused with "
                       f"{'them' if len(names) > 1 else 'it'}; nothing was written. Move "
                       f"{'them' if len(names) > 1 else 'it'} elsewhere, or save into another directory")


def _refuse_non_finite(payloads: Mapping[int, Any]) -> None:
    """A NaN/inf anywhere is refused before anything is written: every loader would refuse the unit."""
    import torch

    def bad(value: Any) -> bool:
        return isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all())

    for layer, payload in payloads.items():
        entries = payload.items() if is_multi_concept_dict(payload) else [(None, payload)]
        for concept, entry in entries:
            if isinstance(entry, torch.Tensor) and entry.dim() == 2:
                rows = [int(row) for row in (~torch.isfinite(entry)).any(dim=1).nonzero().flatten()]
                if rows:
                    raise StorageError(f"layer {layer}, concept(s) {rows}: the update holds NaN or inf values; "
                                       "nothing was saved (a diverged training: lower the learning rate or check the data)")
                continue
            keys = [key for key, value in (entry.items() if isinstance(entry, dict) else [("vector", entry)]) if bad(value)]
            if keys:
                where = f"layer {layer}" + (f", concept {concept}" if concept is not None else "")
                raise StorageError(f"{where}: the update's {keys} hold NaN or inf values; nothing was saved "
                                   "(a diverged training: lower the learning rate or check the data)")


def _write_payloads(directory: PathLike, payloads: Mapping[int, Any], metadata: dict, layers: Optional[Sequence[int]],
                    train_state: Optional[Mapping[int, Sequence[int]]], alg_name: Optional[str]) -> list[Path]:
    """Lock; stage the whole new unit beside the directory; swap it in (see `storage.staging`)."""
    directory = Path(directory)
    layers = sorted(int(layer) for layer in (layers if layers is not None else payloads))
    _refuse_non_finite(payloads)
    given = directory
    with DirectoryLock(directory):
        directory = directory.resolve()  # a symlinked directory: stage and swap beside its target
        remove_stale_copies(directory, lambda pid: False)  # the lock is ours: no other writer is staging here
        _remove_stale_temporaries(directory)
        try:
            previous = read_manifest(directory)
        except StorageError:
            previous = None
        ours = package_files(directory, previous)
        foreign = foreign_reserved(directory, ours)
        new_names = [layer_file(directory, layer).name for layer in payloads] + [METADATA_FILE]
        new_names += [train_state_file(directory, layer).name for layer in (train_state or {})]
        carried = []
        for layer in layers:  # layers this save keeps unchanged: their files (and resume states) carry over
            for name in (layer_file(directory, layer).name, train_state_file(directory, layer).name):
                if name not in new_names and (directory / name).exists():
                    carried.append(name)
                elif name.endswith(".pt") and layer not in payloads:
                    raise StorageError(f"{directory / name}: missing, though this save keeps layer {layer} unchanged; "
                                       "save every layer's update, or re-run the training")
        refused = [name for name in foreign if name not in new_names or name in carried]
        if refused:
            _refuse_foreign(directory, refused)
        stage = staging_dir(directory)
        if stage.exists():
            remove_unit_copy(stage, directory, ())
        stage.mkdir()
        current = stage
        try:
            for layer, payload in payloads.items():
                _save_delay()
                current = layer_file(stage, layer)
                _torch_save(payload, current)
            current = stage / METADATA_FILE
            atomic_write_json(current, metadata)
            for layer, concepts in (train_state or {}).items():
                current = train_state_file(stage, layer)
                write_train_state(stage, layer, concepts, alg_name=alg_name)
            for name in carried:
                link_into(directory / name, stage / name)
            shadowed = [name for name in foreign if file_sha256(directory / name) != file_sha256(stage / name)]
            if shadowed:
                _refuse_foreign(directory, shadowed)
            counts = [payload_concept_count(payload) for payload in payloads.values()]
            if previous is not None and previous.get("complete") and set(payloads) != set(layers):
                counts.append(int(previous.get("n_concepts", 0) or 0))  # layers not rewritten keep their count
            current = stage / MANIFEST_FILE
            finish_directory_write(stage, layers, n_concepts=max(counts, default=0))
            _save_delay()
            unit = sorted(path.name for path in stage.iterdir())
            swap_in(directory, stage, ours | set(foreign), unit)
        except BaseException as error:
            if stage.exists():
                remove_unit_copy(stage, directory, ())
            if no_space(error, stage):
                raise StorageError(f"{current}: no space left on device while saving into {directory}; nothing "
                                   f"there changed (the previous result, if any, still loads). Free disk space, or "
                                   "save into another directory") from None
            if isinstance(error, OSError) and not isinstance(error, StorageError):
                raise StorageError(f"{current}: could not write ({error}); nothing in {directory} changed") from None
            raise
    return [given / name for name in unit if not name.startswith(".")]


def _torch_save(payload: Any, path: Path) -> None:
    """`torch.save` under the file's final name (the archive inside is named after it, as EasyEdit's are)."""
    import torch

    torch.save(payload, path)


def save_interventions(
    directory: PathLike,
    updates: Updates,
    metadata: Optional[dict] = None,
    concept_id: int = 0,
    *,
    layers: Optional[Sequence[int]] = None,
    train_state: Optional[Mapping[int, Sequence[int]]] = None,
    alg_name: Optional[str] = None,
) -> list[Path]:
    """The one writer of saved results: a method directory written as one unit (see the module docstring).

    `updates` is `{layer: update}`, one concept saved as `concept_id` (a vector `[hidden]`, one
    lora/local_weight dict), or `{layer: {concept_id: update}}`, concepts stacked as EasyEdit keeps
    them (vector rows, a `{concept_id: payload}` dict in the given concept order). `metadata`
    (usually built by `intervention_metadata`) goes on top of `intervention_metadata(updates)`.
    `layers` (default: the updates' layers) is what the directory holds afterwards: the package's layer
    files of other layers are dropped, and only layers whose file changes need to be in `updates`.
    The new unit is staged beside the directory and swapped in (`storage.staging`): an interrupted
    save leaves the previous unit loadable; a file the package did not write under a name the unit
    uses is refused, never replaced; a NaN/inf update is refused before anything is written.
    `train_state` (`{layer: finished concept ids}`, with `alg_name`) is the resume state of a
    multi-concept run, written in the same unit.
    """
    payloads: dict[int, Any] = {}
    for layer, update in updates.items():
        if isinstance(update, Mapping):
            stacked = None
            for concept, concept_update in update.items():
                stacked = stack_concept_payload(stacked, concept, concept_update)
            payloads[int(layer)] = stacked
        else:
            payloads[int(layer)] = update_to_payload(update, concept_id)
    return _write_payloads(directory, payloads, {**intervention_metadata(updates), **(metadata or {})}, layers,
                           train_state, alg_name)


# ----------------------------------------------------------------------------- resume state


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
    """`metadata.json` (empty without one), checked against the SHA-256 a complete manifest records for it."""
    directory = Path(directory)
    path = directory / METADATA_FILE
    if not path.exists():
        return {}
    manifest = read_manifest(directory)
    if manifest and manifest.get("complete") is True and isinstance(manifest.get("files"), dict) \
            and METADATA_FILE in manifest["files"]:
        _check_listed_file(directory, METADATA_FILE, manifest["files"][METADATA_FILE], directory / MANIFEST_FILE)
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
        match = LAYER_FILE_NAME.match(path.name)
        if match:
            layers.append(int(match.group(1)))
        elif strict:
            raise StorageError(f"{directory}: '{path.name}' is not a layer file name layer_<L>.pt with a layer L >= 0; "
                               "rename or delete it")
    return sorted(layers)


def listed_layers(directory: PathLike, allow_unmanifested: bool = False, verify: bool = True) -> list[int]:
    """See `_listed_layers`; a refusal names the copy of the previous unit an interrupted swap left, if any."""
    try:
        return _listed_layers(Path(directory), allow_unmanifested)
    except StorageError as error:
        directory = Path(directory)
        copies = sorted(directory.parent.glob(f".{directory.name}.previous-*")) if directory.name else []
        if copies:
            raise StorageError(f"{error}. The previous complete result is in {copies[0]} (a save was interrupted while "
                               f"swapping it in): load that directory, or move its files back") from None
        raise


def _listed_layers(directory: Path, allow_unmanifested: bool = False) -> list[int]:
    """The layers that may be loaded from `directory`, after checking it is one complete unit.

    - with a manifest: it must be complete, every `layer_<L>.pt` present must be listed, and every
      listed file (layer files, metadata.json, resume states) must have its recorded size and SHA-256
      (`verify` is kept for callers; the check is always made);
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
        if ours and not present and not (directory / METADATA_FILE).exists():
            raise StorageError(f"{directory}: holds no saved result (only the lock of a save that was interrupted "
                               f"before it finished); re-run the training that writes it")
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
        if layer_file(directory, layer).name not in manifest["files"]:
            raise StorageError(f"{source}: no entry for {layer_file(directory, layer).name}; {_WHAT_TO_DO}")
    for name, entry in manifest["files"].items():
        _check_listed_file(directory, str(name), entry, source)
    return layers


def _check_listed_file(directory: Path, name: str, entry: Any, source: Path) -> None:
    """One file a complete manifest lists: present, inside the directory, its recorded size and SHA-256."""
    path = directory / name
    if not isinstance(entry, dict) or "/" in name or name in ("", ".", ".."):
        raise StorageError(f"{source}: malformed entry for {name!r}; {_WHAT_TO_DO}")
    if not path.is_file():
        raise StorageError(f"{path}: missing, though {MANIFEST_FILE} lists it; {_WHAT_TO_DO}")
    if entry.get("bytes") is not None and path.stat().st_size != entry["bytes"]:
        raise StorageError(f"{path}: {path.stat().st_size} bytes, but {MANIFEST_FILE} recorded {entry['bytes']} "
                           f"(changed or truncated since it was saved); {_WHAT_TO_DO}")
    if not entry.get("sha256"):
        raise StorageError(f"{source}: no SHA-256 recorded for {name}; {_WHAT_TO_DO}")
    if file_sha256(path) != entry["sha256"]:
        raise StorageError(f"{path}: its SHA-256 differs from the one {MANIFEST_FILE} recorded (the file was edited "
                           f"or damaged since it was saved); restore it, {_WHAT_TO_DO}")


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
            check_update_fits(update, model, layer, path)
        updates[layer] = update
    return updates


def check_update_fits(update: DynamicWeightUpdate, model: nn.Module, layer: int, path: PathLike) -> None:
    """`update`, read from `path`, has the shapes `model` needs at `layer`; an error names the file."""
    try:
        check_fits_model(update, model, layer, source=str(path))
    except (EasyEditSplitError, ValueError, RuntimeError) as error:
        if str(error).startswith(str(path)):
            raise
        raise StorageError(f"{path}: {error}") from None
