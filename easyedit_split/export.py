"""Serve a trained intervention without hooks: merged weights or a standard peft LoRA adapter.

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
import os
import tempfile
from pathlib import Path
from typing import Mapping, Union

import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from .errors import ModelError
from .interventions import DynamicWeightUpdate
from .models import architecture_of, get_component_module

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


def merged_model(model: nn.Module, updates: Mapping[int, DynamicWeightUpdate], multiplier: float = 1.0) -> nn.Module:
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


def _module_name(model: nn.Module, module: nn.Module) -> str:
    for name, candidate in model.named_modules():
        if candidate is module:
            return name
    raise ModelError("export: the down projection is not a submodule of the model")


def export_peft_adapter(
    model: nn.Module, updates: Mapping[int, DynamicWeightUpdate], out_dir: Union[str, Path], multiplier: float = 1.0,
    base_model_name_or_path: str = "",
) -> Path:
    """Write a peft LoRA adapter (`adapter_config.json` + `adapter_model.safetensors`) with peft itself.

    peft builds the adapter on a copy of `model` (`LoraConfig` + `get_peft_model`), the LoRA
    weights are set to the update's, and `save_pretrained` writes it, so `PeftModel.from_pretrained`
    and servers that read peft adapters load it. Only `lora` updates on `mlp_mid` (a LoRA has no
    bias); local_weight: use `merged_model`. Files are moved into `out_dir` one by one, atomically.
    """
    ranks = set()
    targets: dict[int, str] = {}
    for layer, update in updates.items():
        _check_mergeable(model, update)
        if update.method != "lora":
            raise ModelError(f"export: a peft LoRA adapter needs a 'lora' update; layer {layer} holds '{update.method}'")
        ranks.add(update.rank)
        targets[layer] = _module_name(model, get_component_module(model, layer, "mlp_mid"))
    if len(ranks) != 1:
        raise ModelError(f"export: all layers must share one LoRA rank, got {sorted(ranks)}")
    rank = ranks.pop()
    config = LoraConfig(
        r=rank, lora_alpha=rank, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM", inference_mode=True,
        target_modules=[targets[layer] for layer in sorted(targets)],
    )
    peft_model = get_peft_model(copy.deepcopy(model), config)
    with torch.no_grad():
        for layer, update in updates.items():
            lora_layer = peft_model.base_model.model.get_submodule(targets[layer])
            lora_layer.lora_A["default"].weight.copy_(update.lora_A.detach().T)
            lora_layer.lora_B["default"].weight.copy_((multiplier * update.lora_B.detach()).T)
    peft_model.peft_config["default"].base_model_name_or_path = base_model_name_or_path
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=f".{out_dir.name}.") as staging:
        peft_model.save_pretrained(staging)
        for written in Path(staging).iterdir():
            os.replace(written, out_dir / written.name)
    return out_dir
