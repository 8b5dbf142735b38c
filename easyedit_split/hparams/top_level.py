"""``TopLevelConfig``: EasyEdit's hydra top-level config (``config.yaml``), model keys plus method file lists."""
from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Dict, List, Optional, Union

from .. import registry
from ..constants import PathLike
from ..errors import HparamsError, suggest
from .loading import load_hparams
from .base import HyperParams
from .methods import ApplyHyperParams, TrainHyperParams
from .reading import apply_key_aliases, check_min, field_types, keep_known_keys, yaml_path


def _all_method_keys() -> frozenset:
    keys = set()
    for cls in registry.hparams_classes():
        keys |= field_types(cls).keys()
    return frozenset(keys)


@dataclass
class TopLevelConfig(HyperParams):
    """EasyEdit's top-level hydra config (``hparams/config.yaml``): model keys plus method file lists.

    Model keys (``model_name_or_path``, ``dtype``, ``device``, ``seed``,
    ``use_chat_template``, ``system_prompt``, ...) are the ``HyperParams`` keys;
    the ones written in the file override each method file's values, as in
    EasyEdit (``merge_into``).

    Generate:
        steer_train_hparam_paths: train method files, run in order.
        steer_train_dataset: dataset name, or a list of names.
        save_vectors: write the trained interventions.
        steer_vector_output_dirs: output root per train file (index-aligned; the
            first is reused when there are fewer dirs than files, as in EasyEdit).
    Apply:
        apply_steer_hparam_paths: apply method files.
        steer_vector_load_dir: directory per apply file (index-aligned).
        vector_name: name of a single vector to apply (None = from the method files).
    Generation:
        generation_data: dataset names to generate on.
        generation_data_size: examples per dataset (None = all).
        generation_output_dir: where generations are written.
        num_responses: samples per prompt.
        steer_from_end_position: steer only from the last prompt token on.
        generation_params: keyword arguments for ``generate`` (Hugging Face names).
        axbench_output_dir_name: output sub-directory name used by EasyEdit's AxBench runs.
    Overrides:
        method_overrides: other keys of method files given at the top level (e.g.
            hydra's ``+steering_factors=[2.0]``); merged into each method file that has the key.
    """

    steer_train_hparam_paths: List[str] = field(default_factory=list)
    steer_train_dataset: Optional[Union[str, List[str]]] = None
    save_vectors: bool = True
    steer_vector_output_dirs: List[str] = field(default_factory=list)
    apply_steer_hparam_paths: List[str] = field(default_factory=list)
    steer_vector_load_dir: List[str] = field(default_factory=list)
    vector_name: Optional[str] = None
    generation_data: List[str] = field(default_factory=list)
    generation_data_size: Optional[int] = None
    generation_output_dir: Optional[str] = None
    num_responses: int = 1
    steer_from_end_position: bool = False
    generation_params: Dict[str, Any] = field(default_factory=dict)
    axbench_output_dir_name: Optional[str] = None
    method_overrides: Dict[str, Any] = field(default_factory=dict)
    explicit_keys: Optional[List[str]] = field(default=None, repr=False, compare=False)
    """Keys written in the file (None = all of them, for a config built in code)."""

    _LIST_KEYS: ClassVar[tuple] = (
        "steer_train_hparam_paths",
        "steer_vector_output_dirs",
        "apply_steer_hparam_paths",
        "steer_vector_load_dir",
        "generation_data",
    )

    def __post_init__(self) -> None:
        for key in self._LIST_KEYS:  # EasyEdit accepts a single string where a list is expected
            value = getattr(self, key)
            if value is None:
                setattr(self, key, [])
            elif isinstance(value, str):
                setattr(self, key, [value])
        super().__post_init__()

    def _validate(self) -> None:
        super()._validate()
        check_min("num_responses", self.num_responses, 1)
        check_min("generation_data_size", self.generation_data_size, 1)
        if self.steer_train_hparam_paths and self.save_vectors and not self.steer_vector_output_dirs:
            raise HparamsError("key 'steer_vector_output_dirs': needed when steer_train_hparam_paths is set")

    @classmethod
    def _from_data(cls, data: Dict[str, Any], source: str, section: Optional[str] = None) -> "TopLevelConfig":
        if "alg_name" in data:
            raise HparamsError(f"{source}: this is a method file (it has 'alg_name'); load it with load_hparams()")
        data = apply_key_aliases(dict(data), field_types(cls), source)
        own = field_types(cls)
        method_keys = _all_method_keys()
        overrides = dict(data.pop("method_overrides", None) or {})
        for key in list(data):
            if key in own:
                continue
            if key in method_keys:
                overrides[key] = data.pop(key)
                continue
            candidates = (set(own) | method_keys) - {"explicit_keys", "method_overrides"}
            hint = suggest(str(key), candidates) or f"; valid keys: {', '.join(sorted(own))}"
            raise HparamsError(f"{source}: unknown key '{key}' for {cls.__name__}{hint}")
        for key, value in overrides.items():
            if key in ("alg_name", "layers") or key not in method_keys:
                raise HparamsError(
                    f"{source}: key '{key}' cannot be overridden from the top-level config"
                    + suggest(str(key), method_keys)
                )
        data.setdefault("explicit_keys", list(data))
        try:
            return cls(**data, method_overrides=overrides)
        except HparamsError as exc:
            raise HparamsError(f"{source}: {exc}") from None

    def model_keys(self) -> Dict[str, Any]:
        """The model-level keys this config sets (only those written, when read from a file)."""
        model_fields = field_types(HyperParams)
        names = model_fields if self.explicit_keys is None else [k for k in self.explicit_keys if k in model_fields]
        return {name: getattr(self, name) for name in names}

    def merge_into(self, hparams: HyperParams) -> HyperParams:
        """Copy of ``hparams`` with this config's model keys and overrides applied (config wins).

        Keys the method class does not have are skipped, as EasyEdit does.
        """
        updates = keep_known_keys(type(hparams), {**self.model_keys(), **self.method_overrides})
        merged = hparams.to_dict()
        merged.update(copy.deepcopy(updates))
        return type(hparams)(**merged)

    def _resolve_path(self, path: str, base_dir: Optional[PathLike], key: str) -> Path:
        candidate = Path(path)
        if not candidate.is_absolute():
            candidate = Path(base_dir or os.getcwd()) / candidate
        resolved = yaml_path(candidate)
        if not resolved.is_file():
            raise HparamsError(
                f"key '{key}': method file {path!r} not found (looked at {resolved}); "
                "paths are relative to the repository root (or pass base_dir=)"
            )
        return resolved

    def load_train_hparams(self, base_dir: Optional[PathLike] = None) -> List[TrainHyperParams]:
        """Train hparams of every ``steer_train_hparam_paths`` file, merged with this config.

        Each gets its index-aligned ``steer_vector_output_dirs`` entry and the
        top-level ``steer_train_dataset`` when set.
        """
        result = []
        for index, path in enumerate(self.steer_train_hparam_paths):
            file_path = self._resolve_path(path, base_dir, "steer_train_hparam_paths")
            hparams = self.merge_into(load_hparams(file_path, kind="train"))
            updates: Dict[str, Any] = {}
            if self.steer_vector_output_dirs:
                dirs = self.steer_vector_output_dirs
                updates["steer_vector_output_dir"] = dirs[index] if index < len(dirs) else dirs[0]
            if self.steer_train_dataset is not None:
                updates["steer_train_dataset"] = copy.deepcopy(self.steer_train_dataset)
            if self.explicit_keys is None or "save_vectors" in self.explicit_keys:
                updates["save_vectors"] = self.save_vectors
            try:
                result.append(dataclasses.replace(hparams, **updates))
            except HparamsError as exc:
                raise HparamsError(f"{file_path} (merged with the top-level config): {exc}") from None
        return result

    def load_apply_hparams(self, base_dir: Optional[PathLike] = None) -> List[ApplyHyperParams]:
        """Apply hparams of every ``apply_steer_hparam_paths`` file, merged with this config.

        Each gets its index-aligned ``steer_vector_load_dir`` entry.
        """
        result = []
        for index, path in enumerate(self.apply_steer_hparam_paths):
            file_path = self._resolve_path(path, base_dir, "apply_steer_hparam_paths")
            hparams = self.merge_into(load_hparams(file_path, kind="apply"))
            if self.steer_vector_load_dir:
                dirs = self.steer_vector_load_dir
                hparams = dataclasses.replace(
                    hparams, steer_vector_load_dir=dirs[index] if index < len(dirs) else dirs[0]
                )
            result.append(hparams)
        return result

    def to_dict(self) -> Dict[str, Any]:
        """Keys as in the YAML file (overrides flattened back to the top level)."""
        data = dataclasses.asdict(self)
        data.pop("explicit_keys")
        data.update(data.pop("method_overrides"))
        return data
