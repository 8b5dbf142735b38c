"""``HyperParams``: the keys every method file and the top-level config share, and how a file becomes a class.

Building an instance coerces every field to its annotation and runs ``_validate``; ``from_hparams``
reads a YAML path, a dict or an OmegaConf config, picks the section, renames EasyEdit's alternative
spellings and rejects unknown keys with the closest valid one.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Dict, Mapping, Optional

import yaml

from .. import registry
from ..constants import PathLike
from ..dtypes import canonical_dtype_name, resolve_dtype
from ..errors import HparamsError, excerpt, suggest
from ..storage.files import atomic_write_text
from .reading import (
    SECTION_NAMES,
    Mismatch,
    apply_key_aliases,
    apply_value_aliases,
    check_finite_fields,
    check_min,
    coerce,
    describe,
    field_types,
    is_sectioned,
    read_source,
    resolve_section,
)


def _check_unknown_keys(cls: type, data: Mapping, source: str) -> None:
    valid = field_types(cls)
    for key in data:
        if key in valid:
            continue
        hint = suggest(str(key), valid)
        other = _other_kind_owner(cls, key)
        if other is not None:
            hint += f"; '{key}' belongs to {other.__name__}, not {cls.__name__}"
        if not hint:
            hint = f"; valid keys: {', '.join(sorted(valid))}"
        raise HparamsError(f"{source}: unknown key '{key}' for {cls.__name__}{hint}")


def _other_kind_owner(cls: type, key: str) -> Optional[type]:
    """The class of the other kind (train vs apply) for the same alg that has ``key``."""
    if not cls.ALG_NAMES:
        return None
    other = registry.hparams_class(cls.ALG_NAMES[0], "apply" if cls.KIND == "train" else "train")
    return other if key in field_types(other) else None


# --------------------------------------------------------------------------- base class


@dataclass
class HyperParams:
    """Keys shared by every method file and by the top-level config (EasyEdit's base class).

    Model:
        model_name_or_path: Hugging Face id, local directory, or ``"smollm2-135m-instruct"``,
            the offline default model. No default: EasyEdit's method files leave it to the
            top-level config; loading a model with none named is an error that says where to set it.
        dtype: weight dtype name (``fp32``/``float32``, ``fp16``/``float16``/``half``,
            ``bf16``/``bfloat16``, ``auto``); see ``dtypes.resolve_dtype``.
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
    model_name_or_path: Optional[str] = None
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
        for name, tp in field_types(type(self)).items():
            value = getattr(self, name)
            if name == "dtype" and not isinstance(value, str) and value is not None:
                value = canonical_dtype_name(value)  # torch.dtype objects become their names
            try:
                setattr(self, name, coerce(value, tp))
            except Mismatch:
                raise HparamsError(
                    f"key '{name}': expected {describe(tp)}, got {type(value).__name__} ({excerpt(value)})"
                ) from None

    def _validate(self) -> None:
        """Value checks beyond types (every number finite and in range first); subclasses extend this."""
        check_finite_fields(self)
        try:
            canonical_dtype_name(self.dtype)
        except HparamsError as exc:
            raise HparamsError(f"key 'dtype': {exc}") from None
        if not 0.0 < self.vllm_gpu_memory_utilization <= 1.0:
            raise HparamsError(
                f"key 'vllm_gpu_memory_utilization': must be in (0, 1], got {self.vllm_gpu_memory_utilization}"
            )
        check_min("vllm_tensor_parallel_size", self.vllm_tensor_parallel_size, 1)
        check_min("vllm_pipeline_parallel_size", self.vllm_pipeline_parallel_size, 1)

    @property
    def torch_dtype(self) -> Any:
        """``dtype`` as a torch dtype (or ``"auto"``)."""
        return resolve_dtype(self.dtype)

    @classmethod
    def field_names(cls) -> frozenset:
        """The YAML keys this class accepts."""
        return frozenset(field_types(cls))

    @classmethod
    def from_hparams(cls, path_or_dict: Any, *, section: Optional[str] = None, source: Optional[str] = None):
        """Build from a YAML path (``.yaml`` may be omitted), a dict or an OmegaConf DictConfig.

        For a file with ``generate:``/``apply:`` sections, train classes read the
        ``generate`` section and apply classes the ``apply`` section unless
        ``section`` says otherwise. ``source`` labels a dict in error messages.
        """
        data, label = read_source(path_or_dict, source)
        return cls._from_data(data, label, section)

    @classmethod
    def _from_data(cls, data: Dict[str, Any], source: str, section: Optional[str] = None):
        if is_sectioned(data):
            if section is None:
                section = {"train": "generate", "apply": "apply"}.get(cls.KIND)
            if section not in SECTION_NAMES:
                raise HparamsError(
                    f"{source}: the file has 'generate:'/'apply:' sections; say which one to read "
                    f"(section='generate' or section='apply')"
                )
            other = "apply" if section == "generate" else "generate"
            other_cls = registry.find_hparams_class(str(data.get("alg_name", "")), "train" if other == "generate" else "apply")
            if other_cls is not None:  # a typo in the other section is still a typo
                other_data = apply_key_aliases(resolve_section(data, other, source), field_types(other_cls), source)
                _check_unknown_keys(other_cls, other_data, f"{source} [{other}]")
            source = f"{source} [{section}]"
            data = resolve_section(data, section, source)
        elif section is not None and section not in SECTION_NAMES:
            raise HparamsError(f"section must be 'generate' or 'apply', got {section!r}")
        data = apply_key_aliases(dict(data), field_types(cls), source)
        data = apply_value_aliases(data, source)
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

    def to_yaml(self, path: PathLike) -> None:
        """Write all keys as a flat YAML method file that ``from_hparams`` reads back."""
        atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))


