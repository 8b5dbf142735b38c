"""Multi-concept runs (AxBench: hundreds of concepts) sharded across processes, merged into EasyEdit's layout.

Concepts are independent jobs. Each process takes every `world_size`-th concept (sorted ids,
starting at its `rank`), trains it with the method's own train function (one concept at a time,
so the result is exactly what a single-process multi-concept run gives for that concept) and
writes it to its own directory:

    <output_dir>/shards/concept_<id>/layer_<L>.pt      (single-concept EasyEdit payloads)
    <output_dir>/shards/concept_<id>/DONE              (written last: the concept is finished)

Rank 0 then waits for every concept's `DONE` and merges them into EasyEdit's stacked layout in
`<output_dir>` (`layer_<L>.pt`: vectors `[n_concepts, hidden]`, row = concept id; lora and
local-weight `{concept_id: payload}`), plus `metadata.json` and the trainer's
`train_state_layer_<L>.json`. A restarted run skips concepts whose `DONE` exists.

Launch (rank and world size come from `RANK`/`WORLD_SIZE`, which `accelerate launch` and
`torchrun` set; without them the run is one process):

    accelerate launch --cpu --num_processes 2 -m easyedit_split.sharding \\
        --hparams hparams/axbench/smollm2-135m-instruct/spilt/generate_spilt_vector.yaml \\
        --data data/axbench/axbench_train.parquet --output_dir vectors/smollm2/axbench/spilt_vector
"""
from __future__ import annotations

import argparse
import logging
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import torch
import yaml
from torch import nn

from .data import PolarityPair, group_by_concept, load_dataset
from .errors import StorageError, TrainingError
from .hparams import load_hparams
from .interventions import DynamicWeightUpdate
from .models import load_model_and_tokenizer, require_model_name
from .producing import train_and_save
from .registry import get_method
from .storage import (
    METADATA_FILE,
    atomic_torch_save,
    atomic_write_json,
    atomic_write_text,
    available_layers,
    intervention_metadata,
    layer_file,
    payload_to_update,
    safe_torch_load,
    update_to_payload,
    write_train_state,
)
from .training import concept_groups

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]
DONE_MARKER = "DONE"


@dataclass(frozen=True)
class ProcessInfo:
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def process_info() -> ProcessInfo:
    """This process's rank and the world size, from `RANK`/`WORLD_SIZE` (set by `accelerate launch`, `torchrun`)."""
    rank = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", 0)))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    if not 0 <= rank < world_size:
        raise ValueError(f"RANK={rank} is outside WORLD_SIZE={world_size}")
    return ProcessInfo(rank, world_size)


def shard_concepts(concept_ids: Sequence[int], rank: int, world_size: int) -> list[int]:
    """The concepts of one process: every `world_size`-th of the sorted ids, starting at `rank`."""
    return sorted(int(c) for c in concept_ids)[rank::world_size]


def shard_dir(output_dir: PathLike, concept_id: int) -> Path:
    return Path(output_dir) / "shards" / f"concept_{int(concept_id)}"


def is_finished(output_dir: PathLike, concept_id: int) -> bool:
    return (shard_dir(output_dir, concept_id) / DONE_MARKER).exists()


def train_concept(hparams: Any, pairs: Sequence[PolarityPair], model: nn.Module, tokenizer: Any,
                  directory: Optional[PathLike] = None, **metadata: Any) -> dict[int, DynamicWeightUpdate]:
    """One concept's updates `{layer: update}`, by the method named in `hparams.alg_name`, saved in `directory`."""
    concept_ids = {p.concept_id for p in pairs}
    if len(concept_ids) != 1:
        raise TrainingError(f"train_concept: expected the pairs of one concept, got concept ids {sorted(concept_ids)}")
    return train_and_save(hparams, list(pairs), model, tokenizer, directory, **metadata)


@dataclass
class ShardResult:
    rank: int
    world_size: int
    trained: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    merged: list[Path] = field(default_factory=list)


def merge_concepts(output_dir: PathLike, concept_ids: Sequence[int], metadata: Optional[Mapping[str, Any]] = None) -> list[Path]:
    """Stack every concept's `shards/concept_<id>/layer_<L>.pt` into `<output_dir>/layer_<L>.pt` (EasyEdit's layout)."""
    output_dir = Path(output_dir)
    concept_ids = sorted(int(c) for c in concept_ids)
    missing = [c for c in concept_ids if not is_finished(output_dir, c)]
    if missing:
        raise StorageError(f"{output_dir}: concepts {missing} are not finished (no {DONE_MARKER} in shards/concept_<id>/)")
    layers = available_layers(shard_dir(output_dir, concept_ids[0]))
    written = []
    updates: dict[int, dict[int, DynamicWeightUpdate]] = {}
    for layer in layers:
        updates[layer] = {}
        for concept_id in concept_ids:
            path = layer_file(shard_dir(output_dir, concept_id), layer)
            updates[layer][concept_id] = payload_to_update(safe_torch_load(path), source=str(path))
        payloads = {concept_id: update_to_payload(update, concept_id) for concept_id, update in updates[layer].items()}
        first = next(iter(payloads.values()))
        if isinstance(first, torch.Tensor):  # vectors: one row per concept id
            stacked = torch.zeros(max(concept_ids) + 1, first.shape[0], dtype=first.dtype)
            for concept_id, vector in payloads.items():
                stacked[concept_id] = vector
            merged: Any = stacked
        else:
            merged = payloads
        written.append(atomic_torch_save(merged, layer_file(output_dir, layer)))
        written.append(write_train_state(output_dir, layer, concept_ids))
    meta = intervention_metadata(updates, concepts=concept_ids, sharded=True, **(metadata or {}))
    written.append(atomic_write_json(output_dir / METADATA_FILE, meta))
    return written


def wait_for_concepts(output_dir: PathLike, concept_ids: Sequence[int], timeout: float = 24 * 3600.0, poll: float = 0.5) -> None:
    """Block until every concept is finished (a file barrier: works for any launcher, needs a shared disk)."""
    deadline = time.monotonic() + timeout
    while True:
        missing = [c for c in concept_ids if not is_finished(output_dir, c)]
        if not missing:
            return
        if time.monotonic() > deadline:
            raise TrainingError(f"{output_dir}: timed out after {timeout:.0f} s waiting for concepts {missing}")
        time.sleep(poll)


def train_sharded(
    hparams: Any,
    pairs: Sequence[PolarityPair],
    model: nn.Module,
    tokenizer: Any,
    output_dir: PathLike,
    info: Optional[ProcessInfo] = None,
    metadata: Optional[Mapping[str, Any]] = None,
    wait_timeout: float = 24 * 3600.0,
) -> ShardResult:
    """Train this process's share of the concepts in `pairs`; rank 0 merges all of them when done.

    `output_dir` is the method directory in EasyEdit's layout (`<out>/<dataset>/<alg>_<method>`).
    `hparams.max_concepts` keeps the first concepts (sorted ids), as EasyEdit does.
    """
    info = info or process_info()
    # max_concepts and max_num_of_examples are the trainer's settings; CAA uses every concept and pair
    groups = concept_groups(pairs, hparams) if get_method(hparams.alg_name).trained else group_by_concept(pairs)
    result = ShardResult(info.rank, info.world_size)
    for concept_id in shard_concepts(list(groups), info.rank, info.world_size):
        directory = shard_dir(output_dir, concept_id)
        if is_finished(output_dir, concept_id):
            logger.info("rank %d: concept %d already finished (%s); skipped", info.rank, concept_id, directory)
            result.skipped.append(concept_id)
            continue
        group = groups[concept_id]
        started = time.perf_counter()
        train_concept(hparams, group, model, tokenizer, directory, concept_id=concept_id, concept=group[0].concept, rank=info.rank)
        atomic_write_text(directory / DONE_MARKER, f"{time.perf_counter() - started:.3f} s on rank {info.rank}\n")
        logger.info("rank %d: concept %d trained in %.1f s", info.rank, concept_id, time.perf_counter() - started)
        result.trained.append(concept_id)
    if info.is_main:
        wait_for_concepts(output_dir, list(groups), timeout=wait_timeout)
        result.merged = merge_concepts(output_dir, list(groups), {
            "alg_name": hparams.alg_name, "hparams": hparams, "model": model, "world_size": info.world_size,
            "concept_names": {str(c): g[0].concept for c, g in groups.items()}, **(metadata or {}),
        })
    return result


# ============================================================================ command line


def _parse_set(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"--set '{text}': use KEY=VALUE")
    return key.strip(), yaml.safe_load(value)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Train a multi-concept dataset's concepts across processes "
                                     "(run under `accelerate launch --num_processes N`), merged into EasyEdit's layout.")
    parser.add_argument("--hparams", required=True, help="a generate_<method>_<intervention>.yaml file")
    parser.add_argument("--data", required=True, help="multi-concept pairs (AxBench parquet, or any supported file)")
    parser.add_argument("--output_dir", required=True, help="method directory, e.g. vectors/<model>/axbench/<alg>_vector (EasyEdit's directory names)")
    parser.add_argument("--model_name_or_path", default=None, help="Hub id or checkpoint directory (default: the file's)")
    parser.add_argument("--offline", action="store_true", help="use the Hugging Face cache only (as HF_HUB_OFFLINE=1)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per process (default: torch's)")
    parser.add_argument("--set", dest="overrides", action="append", type=_parse_set, default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    hparams = load_hparams(args.hparams, kind="train")
    overrides = dict(args.overrides)
    if args.model_name_or_path:
        overrides["model_name_or_path"] = args.model_name_or_path
    if overrides:
        hparams = replace(hparams, **overrides)
    name = require_model_name(hparams.model_name_or_path, f"{args.hparams} (or --model_name_or_path)")
    model, tokenizer = load_model_and_tokenizer(name, hparams.dtype, hparams.device, offline=args.offline or None)
    pairs = load_dataset(args.data)
    result = train_sharded(hparams, pairs, model, tokenizer, args.output_dir)
    logger.info("rank %d/%d: trained %s, skipped %s%s", result.rank, result.world_size, result.trained, result.skipped,
                f", merged into {args.output_dir}" if result.merged else "")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
