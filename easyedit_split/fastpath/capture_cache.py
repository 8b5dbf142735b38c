"""One capture per dataset: captured layer inputs and prefix keys/values, reused across methods and runs.

The fast paths (training, sweep scoring) start by running the layers below the intervention once
over the data (`packing.capture_layout`, which runs the prefix every row shares through them once:
`prefix_capture`) and the chat template's never-steered prefix once at the layers above
(`replay.capture_prefix`). That result depends only on the model's weights, the
start layer, the token ids and layout of the data (which include the chat template's tokens),
the tokens hidden from attention (`attention_mask: pad_id`), the dtype and this package's code.
`capture` keys it on exactly that:

- in memory, within a process: CAA-style comparisons train SFT and SPLIT (and score several
  methods) on the same data at the same layer; the second method reuses the first's capture;
- in memory, by rows: a capture whose rows are all rows of a kept capture (same model, weights,
  layer and template) is cut out of it, so SFT and SPLIT on `max_num_of_examples` pairs reuse the
  capture CAA made of all pairs; the prefix keys/values are recomputed if their length differs;
- in memory, one layer below: a capture at `l + 1` (a vector replays from there) is made from a
  kept capture of the same rows at `l` by running layer `l` once over it;
- on disk, optionally (`cache_dir`, or the `EASYEDIT_SPLIT_CAPTURE_CACHE` environment variable):
  a file named by the key's hash, holding the key's parts and the rows it was made from; a file
  is used only when both equal this call's (a copied, renamed or edited file is a miss, logged),
  so a changed model, layer, data, template, dtype, device type or code can only miss.

The code in the key is the package version, a SHA-256 of its source files and torch's and
transformers' versions. The model's identity is its config, name/revision, attention
implementation and its weights: on disk a SHA-256 of every parameter's and buffer's bytes (hashed once per process and weights state),
in memory the model object itself and its parameters' version counters (which every in-place
edit bumps).

Captures are made in chunks of rows that fit `memory_mb` (results do not depend on it), and are
kept on `storage_device` (CPU memory for a model on a GPU; the replay moves selected rows over).
"""
from __future__ import annotations

import hashlib
import logging
import os
import uuid
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from .. import __version__
from ..models import get_decoder_layers, hidden_size
from .packing import PackedLayout, capture_layout, select_rows
from .replay import CapturedInputs, PrefixKeyValues, capture_prefix, concat_captures, replay_outputs, take_rows

logger = logging.getLogger(__name__)

CACHE_DIR_ENV = "EASYEDIT_SPLIT_CAPTURE_CACHE"
MEMORY_ENTRIES = 4  # captures kept in memory (least recently used dropped first)
DEFAULT_MEMORY_MB = 2048  # working-set budget of one fast-path pass (hparam `fast_path_memory_mb`)

__all__ = ["Capture", "capture", "capture_key", "clear_memory_cache", "rows_per_chunk", "CACHE_DIR_ENV"]


@dataclass
class Capture:
    """Inputs of layers `start_layer..N-1` for every row of a layout, and the keys/values there of
    its first `prefix.length` positions (shared by every row, never steered)."""

    inputs: CapturedInputs
    prefix: Optional[PrefixKeyValues]
    key: str
    source: str  # "computed", "memory", "memory rows" (rows of a larger capture), "memory (layer below)" or "disk"
    family: str = ""  # the key without the data and the prefix: captures whose rows can be shared
    rows: dict[str, int] = field(default_factory=dict, repr=False)  # row digest -> row


_MEMORY: "OrderedDict[str, Capture]" = OrderedDict()


def clear_memory_cache() -> None:
    """Forget every capture kept in memory (tests; or to free memory)."""
    _MEMORY.clear()


_MODEL_TOKENS: "weakref.WeakKeyDictionary[nn.Module, str]" = weakref.WeakKeyDictionary()
_DIGESTS: dict[tuple[str, int], str] = {}


def _tensors(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Parameters and buffers (rotary frequencies, norms' constants): everything a forward reads."""
    return list(model.named_parameters()) + [(f"buffer:{n}", b) for n, b in model.named_buffers()]


def _weights_state(model: nn.Module) -> tuple[str, int]:
    """This model object (a token no later object reuses) and the state of its weights: every
    in-place change of a parameter or buffer bumps its version counter, so any edit changes the state."""
    token = _MODEL_TOKENS.setdefault(model, uuid.uuid4().hex)
    versions = tuple((t.data_ptr(), t._version, t.dtype, t.device.type) for _, t in _tensors(model))
    return token, hash(versions)


def weights_digest(model: nn.Module) -> str:
    """SHA-256 of every parameter's and buffer's name, shape, dtype and bytes (computed once per
    weights state): the model's content, whatever its name or path."""
    state = _weights_state(model)
    if state not in _DIGESTS:
        digest = hashlib.sha256()
        for name, tensor in _tensors(model):
            digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
            digest.update(tensor.detach().contiguous().view(-1).view(torch.uint8).cpu().numpy().tobytes())
        _DIGESTS[state] = digest.hexdigest()
    return _DIGESTS[state]


_weights_digest = weights_digest


def code_version() -> str:
    """This package's version, a SHA-256 of its source files, and torch's and transformers' versions:
    a capture made by other code (an edited checkout, an upgraded library) is never reused."""
    global _CODE_VERSION
    if _CODE_VERSION is None:
        import transformers

        digest = hashlib.sha256()
        root = Path(__file__).resolve().parent.parent
        for path in sorted(root.rglob("*.py")):
            digest.update(str(path.relative_to(root)).encode())
            digest.update(path.read_bytes())
        _CODE_VERSION = (f"{__version__}+src.{digest.hexdigest()[:16]};torch={torch.__version__};"
                         f"transformers={transformers.__version__}")
    return _CODE_VERSION


_CODE_VERSION: Optional[str] = None


def _layout_tensors(lay: PackedLayout) -> tuple[torch.Tensor, ...]:
    """What a capture of `lay` is computed from: tokens, positions, branches, and the hidden keys
    (`attention_mask: pad_id`; the masks the layers see, so a capture under one rule never serves another)."""
    hidden = () if lay.hidden_keys is None else (lay.hidden_keys,)
    return (lay.input_ids, lay.position_ids, lay.branch, *hidden)


def _attention_mask_part(lay: PackedLayout) -> str:
    """The attention-mask rule of `lay`, named in the key (a mismatch says `attention_mask`)."""
    if lay.hidden_keys is None:
        return "attention_mask=padding"
    bits = lay.hidden_keys.to(torch.uint8).contiguous().numpy().tobytes()
    return f"attention_mask=hidden keys {hashlib.sha256(bits).hexdigest()}"


def _layout_digest(lay: PackedLayout) -> str:
    digest = hashlib.sha256()
    for tensor in _layout_tensors(lay):
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.to(torch.int64).contiguous().numpy().tobytes())
    return digest.hexdigest()


def _row_digests(lay: PackedLayout) -> list[str]:
    """Per row, a SHA-256 of its real tokens, their positions and branches, and which of them are
    hidden keys (padding excluded)."""
    digests = []
    hidden = lay.hidden_keys if lay.hidden_keys is not None else torch.zeros_like(lay.valid)
    for ids, positions, branch, valid, keys in zip(lay.input_ids, lay.position_ids, lay.branch, lay.valid, hidden):
        digest = hashlib.sha256()
        for tensor in (ids[valid], positions[valid], branch[valid]):
            digest.update(tensor.to(torch.int64).contiguous().numpy().tobytes())
        if lay.hidden_keys is not None:
            digest.update(b"hidden" + keys[valid].to(torch.uint8).contiguous().numpy().tobytes())
        digests.append(digest.hexdigest())
    return digests


def _model_parts(model: nn.Module, start_layer: int, template: str, on_disk: bool) -> list[str]:
    """What a capture depends on besides its rows and prefix: code (package source, torch,
    transformers), model (config, name, revision, attention implementation, weights), dtype,
    device type, start layer, template."""
    config = getattr(model, "config", None)
    weights = _weights_digest(model) if on_disk else "object={}:{}".format(*_weights_state(model))
    first = next(model.parameters())
    return [
        f"code={code_version()}",
        f"config={config.to_json_string(use_diff=False) if config is not None else ''}",
        f"name={getattr(config, 'name_or_path', '')}",
        f"revision={getattr(config, '_commit_hash', '')}",
        f"attention={getattr(config, '_attn_implementation', '')}",
        f"weights={weights}",
        f"dtype={first.dtype}",
        f"dtypes={sorted({str(t.dtype) for _, t in _tensors(model)})}",
        f"device={first.device.type}",
        f"layer={start_layer}",
        f"template={hashlib.sha256(template.encode()).hexdigest()}",
    ]


def _family_key(model: nn.Module, start_layer: int, template: str) -> str:
    """Everything a capture's rows depend on except the rows themselves (in-memory model identity)."""
    return hashlib.sha256("\n".join(_model_parts(model, start_layer, template, on_disk=False)).encode()).hexdigest()


def _rows_of_larger(model: nn.Module, lay: PackedLayout, family: str, digests: list[str], prefix_length: int,
                    key: str) -> Optional[Capture]:
    """The capture of `lay` cut out of a kept capture that holds every one of its rows (same model,
    weights, layer, template): e.g. SPLIT on `max_num_of_examples` pairs after CAA on all of them."""
    for entry in reversed(_MEMORY.values()):
        if entry.family != family or not all(d in entry.rows for d in digests):
            continue
        rows = torch.tensor([entry.rows[d] for d in digests], dtype=torch.long)
        inputs = take_rows(model, entry.inputs, rows, lay.input_ids.shape[1])
        if entry.prefix is not None and entry.prefix.length == prefix_length:
            prefix = entry.prefix
        else:
            prefix = capture_prefix(model, inputs, prefix_length) if prefix_length > 0 else None
        return Capture(inputs, prefix, key, "memory rows")
    return None


def _from_layer_below(model: nn.Module, lay: PackedLayout, start_layer: int, prefix_length: int, template: str,
                      digests: list[str], key: str, memory_mb: Optional[float], storage: torch.device) -> Optional[Capture]:
    """The capture at `start_layer` from a kept capture of the same rows one layer below: that
    layer run once over its captured inputs (what the full forward computes there), the kwargs and
    prefix keys/values of the layers above taken over. E.g. a vector trained or scored from `l + 1`
    (`replay.replay_layer`) after CAA or an unsteered pass captured at `l`."""
    below_key = capture_key(model, lay, start_layer - 1, prefix_length, template, on_disk=False)
    below = _MEMORY.get(below_key) or _rows_of_larger(model, lay, _family_key(model, start_layer - 1, template), digests,
                                                       prefix_length, below_key)
    if below is None:
        return None
    inputs, width = below.inputs, below.inputs.hidden_states.shape[1]
    chunk = rows_per_chunk(model, width, memory_mb)
    with torch.no_grad():
        hidden = torch.cat([replay_outputs(model, inputs, [start_layer - 1], torch.arange(b, min(b + chunk, len(inputs))))
                            [start_layer - 1].to(storage) for b in range(0, len(inputs), chunk)])
    above = CapturedInputs(start_layer, hidden, inputs.layer_kwargs[1:], inputs.batch)
    prefix = None
    if below.prefix is not None:
        prefix = PrefixKeyValues(start_layer, below.prefix.length, below.prefix.keys[1:], below.prefix.values[1:])
    return Capture(above, prefix, key, "memory (layer below)")


def capture_key(model: nn.Module, lay: PackedLayout, start_layer: int, prefix_length: int, template: str = "",
                on_disk: bool = True) -> str:
    """The hash every cached capture is stored under: model (config, name, revision, attention
    implementation, weights), dtype, start layer, the layout's token ids, positions, branches and
    hidden keys (`attention_mask`), the prefix length, the chat template text and the package version.

    The weights enter as a SHA-256 of all their bytes (`on_disk`, computed once per weights state),
    or, for the in-memory cache, as this model object and its parameters' version counters."""
    return hashlib.sha256("\n".join(key_parts(model, lay, start_layer, prefix_length, template, on_disk)).encode()).hexdigest()


def key_parts(model: nn.Module, lay: PackedLayout, start_layer: int, prefix_length: int, template: str = "",
              on_disk: bool = True) -> list[str]:
    """The named inputs `capture_key` hashes (stored inside each disk file, compared when it is loaded)."""
    return _model_parts(model, start_layer, template, on_disk) + [f"prefix={prefix_length}", _attention_mask_part(lay),
                                                                  f"data={_layout_digest(lay)}"]


def rows_per_chunk(model: nn.Module, width: int, memory_mb: Optional[float]) -> int:
    """Rows of `width` tokens whose forward through one layer (hidden states, MLP, attention
    scores and the 4-d masks) fits `memory_mb` (None or <= 0: no limit); at least 1."""
    if not memory_mb or memory_mb <= 0:
        return 1 << 30
    config = getattr(model.config, "text_config", None) or model.config
    element = next(model.parameters()).element_size()
    heads = int(getattr(config, "num_attention_heads", 1))
    intermediate = int(getattr(config, "intermediate_size", 4 * hidden_size(model)))
    per_token = element * (6 * hidden_size(model) + 3 * intermediate + (heads + 4) * width)
    return max(1, int(memory_mb * 2**20 // (per_token * width)))


def _cache_dir(cache_dir: Optional[str | Path]) -> Optional[Path]:
    directory = cache_dir if cache_dir is not None else os.environ.get(CACHE_DIR_ENV)
    return Path(directory) if directory else None


PAYLOAD_FORMAT = "easyedit_split.capture/2"


def _to_payload(entry: Capture, parts: list[str], lay: PackedLayout) -> dict[str, Any]:
    """The capture, with the key parts it was made from and the rows it holds (checked on load)."""
    inputs, prefix = entry.inputs, entry.prefix
    return {
        "format": PAYLOAD_FORMAT, "key_parts": list(parts),
        "rows": [lay.input_ids.cpu(), lay.position_ids.cpu(), lay.branch.cpu()],
        "start_layer": inputs.start_layer, "hidden_states": inputs.hidden_states.cpu(),
        "layer_kwargs": [{k: _cpu(v) for k, v in layer.items()} for layer in inputs.layer_kwargs],
        "batch": [inputs.batch.input_ids.cpu(), inputs.batch.attention_mask.cpu(), inputs.batch.labels.cpu()],
        "prefix": None if prefix is None else {
            "start_layer": prefix.start_layer, "length": prefix.length,
            "keys": [k.cpu() for k in prefix.keys], "values": [v.cpu() for v in prefix.values],
        },
    }


def _cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.cpu()
    if isinstance(value, tuple):
        return tuple(_cpu(v) for v in value)
    return value


def _to(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, tuple):
        return tuple(_to(v, device) for v in value)
    return value


def _from_payload(payload: dict[str, Any], key: str, storage: torch.device, run: torch.device) -> Capture:
    from ..prompts import TokenBatch

    inputs = CapturedInputs(
        payload["start_layer"], payload["hidden_states"].to(storage),
        [{k: _to(v, storage) for k, v in layer.items()} for layer in payload["layer_kwargs"]],
        TokenBatch(*(t.to(storage) for t in payload["batch"])),
    )
    prefix = payload["prefix"]
    if prefix is not None:
        prefix = PrefixKeyValues(prefix["start_layer"], prefix["length"], [k.to(run) for k in prefix["keys"]],
                                 [v.to(run) for v in prefix["values"]])
    return Capture(inputs, prefix, key, "disk")


def _mismatch(payload: Any, parts: list[str], lay: PackedLayout) -> Optional[str]:
    """Why a loaded file is not the capture of `parts` and `lay` (None when it is): the name of a
    file proves nothing (copied, renamed or edited files), so its content is compared."""
    if not isinstance(payload, dict) or payload.get("format") != PAYLOAD_FORMAT:
        return "not a capture file of this format"
    stored = payload.get("key_parts")
    if stored != parts:
        if not isinstance(stored, list):
            return "no key recorded"
        names = [p.partition("=")[0] for p in parts]
        differ = [n for n, p in zip(names, parts) if p not in stored] or ["key"]
        return f"made from other inputs ({', '.join(differ)})"
    rows = payload.get("rows")
    expected = (lay.input_ids, lay.position_ids, lay.branch)
    if not (isinstance(rows, list) and len(rows) == 3
            and all(isinstance(r, torch.Tensor) and r.shape == e.shape and torch.equal(r, e.cpu())
                    for r, e in zip(rows, expected))):
        return "holds other rows"
    hidden = payload.get("hidden_states")
    if not isinstance(hidden, torch.Tensor) or tuple(hidden.shape[:2]) != tuple(lay.input_ids.shape):
        return "its hidden states do not match its rows"
    return None


def _load(path: Path, key: str, parts: list[str], lay: PackedLayout, storage: torch.device,
          run: torch.device) -> Optional[Capture]:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        why = _mismatch(payload, parts, lay)
        if why is None:
            return _from_payload(payload, key, storage, run)
    except Exception as error:  # an unreadable cache file is a miss, never an error
        why = f"unreadable ({type(error).__name__}: {str(error)[:200]})"
    logger.warning("capture cache %s: %s; not used, capturing again", path, why)
    return None


def _save(path: Path, entry: Capture, parts: list[str], lay: PackedLayout) -> None:
    from ..storage.files import atomic_torch_save

    try:
        atomic_torch_save(_to_payload(entry, parts, lay), path)
    except Exception as error:  # caching is an optimisation: a failed write only costs the next run
        logger.warning("capture cache %s: not written (%s)", path, error)


def capture(
    model: nn.Module,
    lay: PackedLayout,
    start_layer: int,
    prefix_length: int = 0,
    template: str = "",
    memory_mb: Optional[float] = DEFAULT_MEMORY_MB,
    cache_dir: Optional[str | Path] = None,
    use_cache: bool = True,
) -> Capture:
    """The capture of `lay` at `start_layer` (and its first `prefix_length` positions' keys/values),
    from memory, from disk, or computed in row chunks under `memory_mb` and then cached."""
    run_device = next(get_decoder_layers(model)[start_layer].parameters()).device
    storage = torch.device("cpu") if run_device.type != "cpu" else run_device
    key = capture_key(model, lay, start_layer, prefix_length, template, on_disk=False) if use_cache else ""
    if use_cache and key in _MEMORY:
        _MEMORY.move_to_end(key)
        entry = _MEMORY[key]
        return Capture(entry.inputs, entry.prefix, key, "memory", entry.family, entry.rows)
    family, digests = (_family_key(model, start_layer, template), _row_digests(lay)) if use_cache else ("", [])
    entry = _rows_of_larger(model, lay, family, digests, prefix_length, key) if use_cache else None
    if use_cache and entry is None and start_layer > 0:
        entry = _from_layer_below(model, lay, start_layer, prefix_length, template, digests, key, memory_mb, storage)
    directory = _cache_dir(cache_dir) if use_cache and entry is None else None
    named = key_parts(model, lay, start_layer, prefix_length, template) if directory else []
    path = directory / f"capture-{hashlib.sha256(chr(10).join(named).encode()).hexdigest()}.pt" if directory else None
    if path is not None and path.exists():
        entry = _load(path, key, named, lay, storage, run_device)
    if entry is None:
        chunk = rows_per_chunk(model, lay.input_ids.shape[1], memory_mb)
        parts = []
        for begin in range(0, len(lay), chunk):
            rows = torch.arange(begin, min(begin + chunk, len(lay)))
            part = capture_layout(model, lay if len(rows) == len(lay) else select_rows(lay, rows), start_layer)
            parts.append(concat_captures([part], storage))
        inputs = concat_captures(parts, storage)
        prefix = capture_prefix(model, inputs, prefix_length) if prefix_length > 0 else None
        entry = Capture(inputs, prefix, key, "computed")
        if path is not None:
            _save(path, entry, named, lay)
    if use_cache:
        entry.family, entry.rows = family, {d: i for i, d in enumerate(digests)}
        _remember(key, entry)
    return entry


def _remember(key: str, entry: Capture) -> None:
    _MEMORY[key] = entry
    while len(_MEMORY) > MEMORY_ENTRIES:
        _MEMORY.popitem(last=False)
