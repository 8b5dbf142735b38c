"""`SteeringInterventions`: a multi-layer result as one object (layer -> update), optionally one per concept.

    h_l <- h_l + m * (x_l @ dW_l + db_l)   for every layer l it holds

In the spirit of repeng's `ControlVector`: it saves and loads itself (EasyEdit's `layer_<L>.pt`
layout), applies itself to a model as a context manager / removable handle, and supports
arithmetic, `a + b`, `a - b`, `k * a`, `-a`, so combining or flipping directions is one
expression. It is a read-only `Mapping[int, DynamicWeightUpdate]`, so every function that takes
a `{layer: update}` dict takes it too.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Iterator, Mapping, Optional, Sequence, Union

import torch
from torch import nn

from .constants import PathLike
from .interventions import DynamicWeightUpdate, InterventionHandle, Multiplier, attach
from .storage.units import load_interventions, save_interventions
Trained = Mapping[int, Union[DynamicWeightUpdate, Mapping[int, DynamicWeightUpdate]]]
"""What a method's trainer returns: `{layer: update}` or, for multi-concept data, `{layer: {concept_id: update}}`."""


class SteeringInterventions(Mapping[int, DynamicWeightUpdate]):
    """The active `{layer: update}` of one concept, plus every concept's updates when there are several.

    `concepts` maps concept id -> `{layer: update}`; with one concept it is `{concept_id: updates}`.
    """

    def __init__(self, updates: Mapping[int, DynamicWeightUpdate],
                 concepts: Optional[Mapping[int, Mapping[int, DynamicWeightUpdate]]] = None, concept_id: int = 0) -> None:
        for layer, update in updates.items():
            if not isinstance(update, DynamicWeightUpdate):
                raise TypeError(f"layer {layer}: expected a DynamicWeightUpdate, got {type(update).__name__}")
        self._updates = {int(layer): updates[layer] for layer in sorted(updates)}
        self.concept_id = int(concept_id)
        self.concepts = {int(c): dict(u) for c, u in (concepts or {self.concept_id: self._updates}).items()}

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_trained(cls, trained: Union["SteeringInterventions", Trained]) -> "SteeringInterventions":
        """From a trainer's result: `{layer: update}`, or `{layer: {concept: update}}` (lowest concept active)."""
        if isinstance(trained, SteeringInterventions):
            return trained
        if trained and all(isinstance(v, Mapping) for v in trained.values()):
            concepts: dict[int, dict[int, DynamicWeightUpdate]] = {}
            for layer, per_concept in trained.items():
                for concept_id, update in per_concept.items():
                    concepts.setdefault(int(concept_id), {})[int(layer)] = update
            active = min(concepts)
            return cls(concepts[active], concepts, active)
        return cls(trained)  # type: ignore[arg-type]

    @classmethod
    def load(cls, directory: PathLike, layers: Optional[Sequence[int]] = None, concept_id: int = 0,
             model: Optional[nn.Module] = None, allow_unmanifested: bool = False) -> "SteeringInterventions":
        """Read the `layer_<L>.pt` files a saved directory's manifest lists (EasyEdit's directories: its files).

        `model` checks shapes and metadata. A directory of ours without a complete manifest (an
        interrupted save) is refused unless `allow_unmanifested`; see docs/storage.md.
        """
        updates = load_interventions(directory, list(layers) if layers is not None else None, concept_id, model=model,
                                     allow_unmanifested=allow_unmanifested)
        return cls(updates, concept_id=concept_id)

    def save(self, directory: PathLike, metadata: Optional[dict] = None) -> list[Path]:
        """Write EasyEdit's layout as one unit: one `layer_<L>.pt` per layer (concepts stacked as EasyEdit
        does), metadata.json and the manifest; layer files of other layers in `directory` are deleted."""
        if len(self.concepts) <= 1:
            return save_interventions(directory, self._updates, metadata, self.concept_id)
        per_layer: dict[int, dict[int, DynamicWeightUpdate]] = {}
        for concept_id, updates in sorted(self.concepts.items()):
            for layer, update in updates.items():
                per_layer.setdefault(layer, {})[concept_id] = update
        return save_interventions(directory, per_layer, {"concepts": sorted(self.concepts), **(metadata or {})})

    # ------------------------------------------------------------------ Mapping
    def __getitem__(self, layer: int) -> DynamicWeightUpdate:
        return self._updates[layer]

    def __iter__(self) -> Iterator[int]:
        return iter(self._updates)

    def __len__(self) -> int:
        return len(self._updates)

    def __repr__(self) -> str:
        inner = ", ".join(f"{layer}: {update.method}@{update.component}" for layer, update in self._updates.items())
        extra = f", concepts={sorted(self.concepts)}" if len(self.concepts) > 1 else ""
        return f"SteeringInterventions({{{inner}}}{extra})"

    @property
    def layers(self) -> list[int]:
        return list(self._updates)

    def for_concept(self, concept_id: int) -> "SteeringInterventions":
        """The same object with another concept active."""
        if concept_id not in self.concepts:
            raise KeyError(f"concept {concept_id}: these interventions hold concepts {sorted(self.concepts)}")
        return SteeringInterventions(self.concepts[concept_id], self.concepts, concept_id)

    # ------------------------------------------------------------------ use
    def apply(self, model: nn.Module, multiplier: Multiplier = 1.0,
              positions: Optional[torch.Tensor] = None) -> InterventionHandle:
        """Hook into `model`: `with interventions.apply(model, 4.0): ...`, or keep the handle and `.remove()` it."""
        return attach(model, self._updates, multiplier, positions)

    # ------------------------------------------------------------------ arithmetic (active concept only)
    def __add__(self, other: Mapping[int, DynamicWeightUpdate]) -> "SteeringInterventions":
        layers = sorted(set(self._updates) | set(other))
        summed = {}
        for layer in layers:
            if layer in self._updates and layer in other:
                summed[layer] = add_updates(self._updates[layer], other[layer], source=f"layer {layer}")
            else:
                summed[layer] = copy.deepcopy(self._updates.get(layer, other.get(layer)))
        return SteeringInterventions(summed)

    def __mul__(self, factor: float) -> "SteeringInterventions":
        return SteeringInterventions({layer: update.scaled(float(factor)) for layer, update in self._updates.items()})

    __rmul__ = __mul__

    def __neg__(self) -> "SteeringInterventions":
        return self * -1.0

    def __sub__(self, other: Mapping[int, DynamicWeightUpdate]) -> "SteeringInterventions":
        return self + (-SteeringInterventions(other))


def add_updates(a: DynamicWeightUpdate, b: DynamicWeightUpdate, source: str = "update") -> DynamicWeightUpdate:
    """One update whose delta is `delta_a + delta_b` for every input.

    vector + vector adds the vectors; lora + lora stacks the ranks (`[A_a A_b] @ [B_a; B_b]`);
    any other pair becomes a `local_weight` (`dW_a + dW_b`, `db_a + db_b`). Updates that read their
    input must read the same component.
    """
    if a.hidden_size != b.hidden_size:
        raise ValueError(f"{source}: cannot add updates of widths {a.hidden_size} and {b.hidden_size}")
    readers = [u for u in (a, b) if u.reads_input]
    if len({u.component for u in readers}) > 1:
        raise ValueError(f"{source}: cannot add updates that read different components ({a.component}, {b.component})")
    with torch.no_grad():
        if a.method == b.method == "vector":
            return DynamicWeightUpdate.from_vector(a.bias + b.bias.to(a.bias.dtype), component=a.component)
        if a.method == b.method == "lora":
            return DynamicWeightUpdate.from_lora(torch.cat([a.lora_A, b.lora_A.to(a.lora_A.dtype)], dim=1),
                                                 torch.cat([a.lora_B, b.lora_B.to(a.lora_B.dtype)], dim=0), component=a.component)
        reader = readers[0]
        dtype = (reader.lora_A if reader.method == "lora" else reader.weight).dtype
        weight = torch.zeros(reader.input_size, a.hidden_size, dtype=dtype)
        bias = torch.zeros(a.hidden_size, dtype=dtype)
        for update in (a, b):
            delta_weight = update.delta_weight()
            if delta_weight is not None:
                weight += delta_weight.to(dtype)
            if update.bias is not None:
                bias += update.bias.to(dtype)
        return DynamicWeightUpdate.from_local_weight(weight, bias, component=reader.component)
