"""Serve a trained intervention without hooks: merged weights or a standard peft LoRA adapter (DESIGN 6).

An update on `mlp_mid` reads the down projection's input `x` and adds `m * (x @ dW + db)` to the
decoder layer's output. In families whose layer output is `residual + down_proj(...)` (no norm
after the MLP: Llama, Qwen2, Mistral, ...), that is exactly a change of the down projection:

    down_proj.weight += m * dW.T          down_proj.bias += m * db

so a `lora` update is a peft LoRA adapter on `layers.<L>.mlp.down_proj` with `lora_A = A.T`,
`lora_B = (m * B).T` and scaling 1 (`lora_alpha = r`), which any server that loads peft
adapters can serve. Difference from the hooks: a merged update acts on every position,
including the chat template's prefix that the hooks leave unsteered.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Union

import torch
from safetensors.torch import save_file
from torch import nn

from .errors import ModelError
from .interventions import DynamicWeightUpdate
from .models import architecture_of, get_component_module, get_layer
from .storage import atomic_write, atomic_write_json

# Families whose MLP output goes straight into the residual stream (no post-MLP norm).
MERGEABLE_FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "olmo", "granite", "smollm3")


def _check_mergeable(model: nn.Module, update: DynamicWeightUpdate) -> None:
    family = getattr(getattr(model, "config", None), "model_type", None)
    architecture_of(model)
    if family not in MERGEABLE_FAMILIES:
        raise ModelError(
            f"export: '{family}' normalises or rescales the MLP output before the residual stream, so an update "
            f"there is not a change of down_proj; mergeable families: {MERGEABLE_FAMILIES}"
        )
    if update.component != "mlp_mid" or update.method == "vector":
        raise ModelError(
            f"export: only lora/local_weight updates on 'mlp_mid' are weight changes of down_proj "
            f"(got {update.method} on '{update.component}'); keep using the hooks for the others"
        )


def merged_model(model: nn.Module, updates: dict[int, DynamicWeightUpdate], multiplier: float = 1.0) -> nn.Module:
    """A copy of `model` with `m * dW` (and `m * db`) folded into each layer's down projection."""
    for layer, update in updates.items():
        _check_mergeable(model, update)
    merged = copy.deepcopy(model)
    with torch.no_grad():
        for layer, update in updates.items():
            down = get_component_module(merged, layer, "mlp_mid")
            down.weight += (multiplier * update.delta_weight()).T.to(down.weight.dtype)
            bias = update.bias
            if bias is not None and bool(bias.ne(0).any()):
                extra = (multiplier * bias).to(down.weight.dtype)
                if down.bias is None:
                    down.bias = nn.Parameter(extra.clone())
                else:
                    down.bias += extra
    return merged


def export_peft_adapter(
    model: nn.Module, updates: dict[int, DynamicWeightUpdate], out_dir: Union[str, Path], multiplier: float = 1.0,
    base_model_name_or_path: str = "",
) -> Path:
    """Write `adapter_config.json` + `adapter_model.safetensors`, which `peft.PeftModel.from_pretrained` loads.

    Only `lora` updates on `mlp_mid` (a LoRA has no bias); local_weight: use `merged_model`.
    """
    ranks = set()
    state: dict[str, torch.Tensor] = {}
    for layer, update in updates.items():
        _check_mergeable(model, update)
        if update.method != "lora":
            raise ModelError(f"export: a peft LoRA adapter needs a 'lora' update; layer {layer} holds '{update.method}'")
        get_layer(model, layer)
        ranks.add(update.rank)
        prefix = f"base_model.model.model.layers.{layer}.mlp.down_proj"
        state[f"{prefix}.lora_A.weight"] = update.lora_A.detach().T.contiguous().cpu()
        state[f"{prefix}.lora_B.weight"] = (multiplier * update.lora_B.detach()).T.contiguous().cpu()
    if len(ranks) != 1:
        raise ModelError(f"export: all layers must share one LoRA rank, got {sorted(ranks)}")
    rank = ranks.pop()
    out_dir = Path(out_dir)
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": rank, "lora_dropout": 0.0,
        "bias": "none", "fan_in_fan_out": False, "inference_mode": True,
        "target_modules": [f"model.layers.{layer}.mlp.down_proj" for layer in sorted(updates)],
        "base_model_name_or_path": base_model_name_or_path,
    }
    atomic_write_json(out_dir / "adapter_config.json", config)
    atomic_write(out_dir / "adapter_model.safetensors", lambda tmp: save_file(state, tmp))
    return out_dir


def read_adapter_config(out_dir: Union[str, Path]) -> dict:
    return json.loads((Path(out_dir) / "adapter_config.json").read_text(encoding="utf-8"))
