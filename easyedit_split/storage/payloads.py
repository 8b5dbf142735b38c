"""The tensor payload codec: one `DynamicWeightUpdate` <-> the object EasyEdit keeps in `layer_<L>.pt`.

Payloads, as EasyEdit writes and reads them:
- vector: a tensor `[hidden]`, or `[n_concepts, hidden]` (row = concept id);
- lora: `{"lora_A", "lora_B", "r", "alpha", "intervention_components", "concept_id"}`;
- local_weight: `{"weight", "bias", "intervention_components", "concept_id"}`;
- multi-concept lora/local_weight: `{concept_id: payload}`.
Decoding checks every tensor (floating point, finite) and names the file in every error.
"""
from __future__ import annotations

from typing import Any, Optional

import torch

from ..errors import StorageError
from ..interventions import DynamicWeightUpdate


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


def is_multi_concept_dict(payload: Any) -> bool:
    """A `{concept_id: payload}` dict (multi-concept lora/local_weight), not one payload's own dict."""
    return isinstance(payload, dict) and bool(payload) and all(isinstance(v, dict) for v in payload.values())


def payload_method(payload: Any, source: str = "intervention") -> str:
    """The form a payload holds (`vector`, `lora`, `local_weight`); anything else is an error naming `source`."""
    if isinstance(payload, torch.Tensor):
        return "vector"
    if is_multi_concept_dict(payload):
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
    if is_multi_concept_dict(payload):
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
    combined = dict(existing) if is_multi_concept_dict(existing) else {}
    combined[int(concept_id)] = payload
    return combined


def payload_concept_count(payload: Any) -> int:
    """Concepts one layer payload holds: rows of a stacked vector, entries of a concept dict, else 1."""
    if isinstance(payload, torch.Tensor):
        return int(payload.shape[0]) if payload.dim() == 2 else 1
    return len(payload) if is_multi_concept_dict(payload) else 1
