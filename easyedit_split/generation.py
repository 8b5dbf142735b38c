"""Steered text generation: the one loop that turns (prompts x multipliers x samples) into texts.

    h_l <- h_l + m * (x @ dW + db)   at every hooked layer l, at the steered positions, for each row's m

Every (multiplier, prompt) row runs in left-padded batches; each row carries its own multiplier,
so a whole sweep costs one `model.generate` call per batch. The prompt is rendered with the chat
template (`PromptFormat`); the prompt pass is steered where `prompt_format.steer_positions` says
(`prompts.steered_prompt_positions`: every position with `easyedit` and `all`, as EasyEdit's
apply step; after the template's common prefix with `after_prefix`; docs/conventions.md);
every generated token is steered. Each record names the rule it was generated under. `SteerEditor.generate` and the EasyEdit pipeline
(`integrations.pipeline`) both call `generate_steered`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence, Union

import torch
from torch import nn

from .interventions import DynamicWeightUpdate, InterventionHandle, attach
from .models import model_device
from .prompts import PromptFormat, steered_prompt_positions

UpdateSet = Mapping[int, DynamicWeightUpdate]
Updates = Union[UpdateSet, Sequence[UpdateSet]]
"""One `{layer: update}` mapping (or a `SteeringInterventions`), or several hooked together (EasyEdit applies all
its apply files at once; two sets may hook the same layer)."""

_SAMPLING_ONLY = ("temperature", "top_p", "top_k")


@dataclass(frozen=True)
class GenerationSettings:
    """EasyEdit's `generation_params`, typed. Greedy unless `do_sample`; sampling keys are ignored when greedy.

    `seed`, when set, seeds torch before each sample pass (sample `s` uses `seed + s`), so sampled
    texts repeat; `None` leaves the random state alone (the caller seeded once). `extra` passes any
    other keyword to `model.generate`.
    """

    max_new_tokens: int = 40
    do_sample: bool = False
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    top_k: Optional[int] = None
    num_samples: int = 1
    seed: Optional[int] = None
    batch_size: int = 16
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {self.num_samples}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if "num_return_sequences" in self.extra:
            raise ValueError("generation_params: num_return_sequences is not supported; use num_samples "
                             "(EasyEdit's num_responses), which also seeds each sample")

    @classmethod
    def from_params(cls, params: Optional[Mapping[str, Any]] = None, **overrides: Any) -> "GenerationSettings":
        """From EasyEdit's `generation_params` dict (`max_tokens`, vLLM's name, means `max_new_tokens`)."""
        values = dict(params or {})
        values.update(overrides)
        if "max_tokens" in values:
            values.setdefault("max_new_tokens", values.pop("max_tokens"))
            values.pop("max_tokens", None)
        known = {name for name in cls.__dataclass_fields__ if name != "extra"}
        chosen = {key: values.pop(key) for key in list(values) if key in known}
        values.pop("pad_token_id", None)  # always the tokenizer's
        return cls(**chosen, extra={**values})

    def generate_kwargs(self, pad_token_id: Optional[int]) -> dict[str, Any]:
        """Keyword arguments of `model.generate` for one sample pass."""
        kwargs: dict[str, Any] = {**self.extra, "max_new_tokens": int(self.max_new_tokens), "do_sample": bool(self.do_sample),
                                  "pad_token_id": pad_token_id}
        if self.do_sample:
            kwargs.update({key: getattr(self, key) for key in _SAMPLING_ONLY if getattr(self, key) is not None})
        else:
            for key in _SAMPLING_ONLY:
                kwargs.pop(key, None)
        return kwargs


@dataclass(frozen=True)
class GenerationRecord:
    """One generated text: which prompt (index and text), at which multiplier, which sample."""

    prompt_index: int
    prompt: str
    multiplier: float
    sample: int
    text: str
    """The new tokens, decoded without special tokens."""
    complete_output: str
    """Rendered prompt + generation with special tokens, without padding (EasyEdit's `complete_output`)."""
    steer_positions: str = ""
    """The `steer_positions` rule of the prompt pass (docs/conventions.md)."""


def _update_sets(updates: Updates) -> list[UpdateSet]:
    if isinstance(updates, Mapping):
        return [updates] if len(updates) else []
    return [u for u in updates if len(u)]


def generate_steered(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    updates: Updates,
    multipliers: Sequence[float] = (1.0,),
    settings: Optional[GenerationSettings] = None,
    prompt_format: Optional[PromptFormat] = None,
) -> list[GenerationRecord]:
    """Generate for every (sample, multiplier, prompt); records come back in that order.

    `updates` may be empty: then every multiplier generates the unsteered text. The tokenizer's
    padding side is restored afterwards, and the hooks are removed even on error.
    """
    settings = settings or GenerationSettings()
    prompt_format = prompt_format or PromptFormat()
    if tokenizer.pad_token_id is None:
        raise ValueError("the tokenizer has no pad token: set tokenizer.pad_token (e.g. to eos_token) before generating")
    rows = [(float(m), index) for m in multipliers for index in range(len(prompts))]
    rendered = [prompt_format.prompt_text(tokenizer, prompt) for prompt in prompts]
    add_special_tokens = not prompt_format.uses_template(tokenizer)
    kwargs = settings.generate_kwargs(tokenizer.pad_token_id)
    device = model_device(model)
    records: list[GenerationRecord] = []
    handles: list[InterventionHandle] = []
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # generation continues from each row's last real token
    try:
        handles = [attach(model, dict(update_set), 0.0) for update_set in _update_sets(updates)]
        for sample in range(settings.num_samples):
            if settings.seed is not None:
                torch.manual_seed(int(settings.seed) + sample)
            for start in range(0, len(rows), settings.batch_size):
                chunk = rows[start : start + settings.batch_size]
                encoded = tokenizer([rendered[i] for _, i in chunk], return_tensors="pt", padding=True,
                                    add_special_tokens=add_special_tokens).to(device)
                positions = steered_prompt_positions(tokenizer, prompt_format, encoded["attention_mask"])
                for handle in handles:
                    handle.multiplier = torch.tensor([m for m, _ in chunk])
                    handle.positions = positions
                with torch.no_grad():
                    output = model.generate(**encoded, **kwargs)
                width = encoded["input_ids"].shape[1]
                for (multiplier, index), ids, mask in zip(chunk, output, encoded["attention_mask"]):
                    padding = int(width - mask.sum())
                    records.append(GenerationRecord(
                        prompt_index=index, prompt=prompts[index], multiplier=multiplier, sample=sample,
                        text=tokenizer.decode(ids[width:], skip_special_tokens=True),
                        complete_output=tokenizer.decode(ids[padding:], skip_special_tokens=False),
                        steer_positions=prompt_format.steer_positions,
                    ))
    finally:
        tokenizer.padding_side = padding_side
        for handle in handles:
            handle.remove()
    return records


def texts_by_multiplier(records: Sequence[GenerationRecord], sample: int = 0) -> dict[float, list[str]]:
    """`{m: [text per prompt, in prompt order]}` for one sample."""
    texts: dict[float, dict[int, str]] = {}
    for record in records:
        if record.sample == sample:
            texts.setdefault(record.multiplier, {})[record.prompt_index] = record.text
    return {m: [by_index[i] for i in sorted(by_index)] for m, by_index in texts.items()}
