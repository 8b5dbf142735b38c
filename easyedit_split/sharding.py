"""Multi-concept runs (AxBench: hundreds of concepts) sharded across processes, merged into EasyEdit's layout.

Concepts are independent jobs. Each process takes every `world_size`-th concept (sorted ids,
starting at its `rank`), trains it with the method's own train function (one concept at a time,
so the result is exactly what a single-process multi-concept run gives for that concept) and
writes it to its own directory:

    <output_dir>/shards/concept_<id>/layer_<L>.pt      (single-concept EasyEdit payloads)
    <output_dir>/shards/concept_<id>/DONE              (written last: the concept is finished)

When every rank is done (a torch.distributed gloo collective: no polling of files), rank 0 merges them into EasyEdit's stacked layout in
`<output_dir>` (`layer_<L>.pt`: vectors `[n_concepts, hidden]`, row = concept id; lora and
local-weight `{concept_id: payload}`), plus `metadata.json` and the trainer's
`train_state_layer_<L>.json`. A restarted run skips concepts whose `DONE` exists.

Launch with `torchrun`, or `accelerate launch` on GPUs (they set `RANK`, `WORLD_SIZE`, `MASTER_ADDR`,
`MASTER_PORT`; without them the run is one process). The processes join a gloo process group, also
when the model is on GPUs: it only coordinates. A rank that raises tells the others, which stop
before their next concept with an error naming it; a rank that is killed breaks the group's
connections, and the others fail at their next collective instead of waiting. On CPUs use torchrun:
`accelerate launch --cpu --num_processes N` starts one process (accelerate 1.x), which is warned about:

    torchrun --nproc_per_node 2 -m easyedit_split.sharding \\
        --hparams hparams/axbench/smollm2-135m-instruct/spilt/generate_spilt_vector.yaml \\
        --data data/axbench/axbench_train.parquet --output-dir vectors/smollm2/axbench/spilt_vector
"""
from __future__ import annotations

import argparse
import logging
import os
import time
from datetime import timedelta
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import torch
import torch.distributed as dist
from torch import nn

from .cli.common import parse_set_option
from .constants import PathLike
from .data import PolarityPair, group_by_concept, load_dataset
from .easyedit_layout import layer_file
from .errors import HparamsError, StorageError, TrainingError
from .hparams import load_hparams
from .hparams.reading import suggest
from .interventions import DynamicWeightUpdate
from .models import load_model_and_tokenizer, require_model_name
from .producing import train_and_save
from .registry import get_method
from .storage.files import atomic_write_text, check_writable, safe_torch_load
from .storage.payloads import payload_to_update
from .storage.units import intervention_metadata, listed_layers, save_interventions
from .training import concept_groups

logger = logging.getLogger(__name__)
DONE_MARKER = "DONE"


@dataclass(frozen=True)
class ProcessInfo:
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def process_info() -> ProcessInfo:
    """This process's rank and the world size: the process group's, else `RANK`/`WORLD_SIZE` (launchers set them)."""
    if dist.is_available() and dist.is_initialized():
        return ProcessInfo(dist.get_rank(), dist.get_world_size())
    rank = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", 0)))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    if not 0 <= rank < world_size:
        raise ValueError(f"RANK={rank} is outside WORLD_SIZE={world_size}")
    return ProcessInfo(rank, world_size)


FAILED_KEY = "easyedit_split/sharding/failed"


class ShardGroup:
    """The ranks of one sharded run, joined in a gloo process group (None of this when there is one process).

    `timeout` bounds every collective: the final one waits for the slowest rank's share of concepts,
    so it must exceed the longest share (a crashed or killed rank ends the wait at once, see the module doc).
    """

    def __init__(self, info: ProcessInfo, timeout: float) -> None:
        self.info = info
        self.owned = False
        if info.world_size > 1 and not dist.is_initialized():
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ.setdefault("MASTER_PORT", "29500")
            dist.init_process_group("gloo", rank=info.rank, world_size=info.world_size,
                                    timeout=timedelta(seconds=timeout))
            self.owned = True
        self.distributed = info.world_size > 1 and dist.is_initialized()

    def _store(self) -> Any:
        try:
            return dist.distributed_c10d._get_default_store()
        except (AttributeError, RuntimeError, ValueError):  # private API; without it failures surface at the end
            return None

    def announce_failure(self, error: BaseException) -> None:
        """Tell the other ranks (best effort) that this one failed, before it joins the final collective."""
        store = self._store() if self.distributed else None
        if store is not None:
            try:
                store.set(FAILED_KEY, f"rank {self.info.rank}: {type(error).__name__}: {error}")
            except RuntimeError:
                pass

    def check_others(self) -> None:
        """Raise if another rank has announced a failure (called between concepts: no waiting)."""
        store = self._store() if self.distributed else None
        if store is None:
            return
        try:
            failed = store.check([FAILED_KEY])
            message = store.get(FAILED_KEY).decode("utf-8", "replace") if failed else None
        except RuntimeError as error:  # the store (hosted by rank 0) is gone: rank 0 died
            raise TrainingError(f"rank {self.info.rank}: lost the process group ({error}); another rank died") from error
        if message is not None:
            raise TrainingError(f"rank {self.info.rank}: stopping, another rank failed ({message})")

    def gather_failures(self, failure: Optional[str]) -> list[str]:
        """Every rank's failure message (None = fine), after all ranks arrive; a dead rank raises here."""
        if not self.distributed:
            return [failure] if failure else []
        statuses: list[Optional[str]] = [None] * self.info.world_size
        try:
            dist.all_gather_object(statuses, failure)
        except RuntimeError as error:  # gloo: connection closed by a killed peer, or the timeout
            raise TrainingError(f"rank {self.info.rank}: the sharded run broke off ({str(error).splitlines()[0]}); "
                                "another rank died or did not finish within the timeout") from error
        return [f"rank {rank}: {status}" for rank, status in enumerate(statuses) if status]

    def close(self) -> None:
        if self.owned and dist.is_initialized():
            dist.destroy_process_group()


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
    layers = listed_layers(shard_dir(output_dir, concept_ids[0]), verify=True)
    updates: dict[int, dict[int, DynamicWeightUpdate]] = {}
    for concept_id in concept_ids:
        directory = shard_dir(output_dir, concept_id)
        if listed_layers(directory, verify=True) != layers:
            raise StorageError(f"{directory}: holds layers {listed_layers(directory)}, but concept {concept_ids[0]} "
                               f"holds {layers}; retrain it (delete the directory)")
    for layer in layers:
        updates[layer] = {}
        for concept_id in concept_ids:
            path = layer_file(shard_dir(output_dir, concept_id), layer)
            update = payload_to_update(safe_torch_load(path), source=str(path))
            updates[layer][concept_id] = update
    meta = intervention_metadata(updates, concepts=concept_ids, sharded=True, **(metadata or {}))
    return save_interventions(output_dir, updates, meta, train_state={layer: concept_ids for layer in layers},
                              alg_name=meta.get("alg_name"))


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
    `hparams.max_concepts` keeps the first concepts (sorted ids), as EasyEdit does. With several
    processes, `wait_timeout` (seconds) bounds the wait for the slowest rank; a failed or killed rank
    makes every rank raise a TrainingError naming it, and nothing is merged.
    """
    info = info or process_info()
    check_writable(output_dir, "output directory")
    group = ShardGroup(info, wait_timeout)
    try:
        return _train_shard(hparams, pairs, model, tokenizer, output_dir, info, group, metadata)
    finally:
        group.close()


def _train_shard(hparams: Any, pairs: Sequence[PolarityPair], model: nn.Module, tokenizer: Any, output_dir: PathLike,
                 info: ProcessInfo, group: ShardGroup, metadata: Optional[Mapping[str, Any]]) -> ShardResult:
    # max_concepts and max_num_of_examples are the trainer's settings; CAA uses every concept and pair
    groups = concept_groups(pairs, hparams) if get_method(hparams.alg_name).trained else group_by_concept(pairs)
    _warn_when_cut(hparams, len(group_by_concept(pairs)), len(groups))
    result = ShardResult(info.rank, info.world_size)
    failure: Optional[BaseException] = None
    try:
        for concept_id in shard_concepts(list(groups), info.rank, info.world_size):
            group.check_others()
            _train_one(hparams, groups[concept_id], concept_id, model, tokenizer, output_dir, info, result)
    except Exception as error:  # tell the others now, then report in the final collective
        failure = error
        group.announce_failure(error)
    failures = group.gather_failures(None if failure is None else f"{type(failure).__name__}: {failure}")
    if failure is not None:
        raise failure
    if failures:
        raise TrainingError(f"{output_dir}: sharded run failed on {'; '.join(failures)}; nothing merged. "
                            "Finished concepts are kept and skipped when the run is restarted.")
    merge_error: Optional[str] = None
    if info.is_main:
        try:
            result.merged = merge_concepts(output_dir, list(groups), {
                "alg_name": hparams.alg_name, "hparams": hparams, "model": model, "world_size": info.world_size,
                "concept_names": {str(c): g[0].concept for c, g in groups.items()}, **(metadata or {}),
            })
        except Exception as error:
            merge_error = f"{type(error).__name__}: {error}"
            group.gather_failures(merge_error)
            raise
    merge_failures = group.gather_failures(merge_error)
    if merge_failures:
        raise TrainingError(f"{output_dir}: merging failed on {'; '.join(merge_failures)}")
    return result


def _warn_when_cut(hparams: Any, in_data: int, kept: int) -> None:
    """Say that max_concepts cuts the data (EasyEdit's AxBench files set max_concepts: 1): never silently."""
    if kept < in_data:
        logger.warning("max_concepts: %s in %s keeps %d of the %d concepts in the data (the first ids); "
                       "pass --set max_concepts=%d (or null) to train all of them", hparams.max_concepts,
                       getattr(hparams, "alg_name", "the hparams"), kept, in_data, in_data)


def _train_one(hparams: Any, group: Sequence[PolarityPair], concept_id: int, model: nn.Module, tokenizer: Any,
               output_dir: PathLike, info: ProcessInfo, result: ShardResult) -> None:
    directory = shard_dir(output_dir, concept_id)
    if is_finished(output_dir, concept_id):
        logger.info("rank %d: concept %d already finished (%s); skipped", info.rank, concept_id, directory)
        result.skipped.append(concept_id)
        return
    started = time.perf_counter()
    train_concept(hparams, group, model, tokenizer, directory, concept_id=concept_id, concept=group[0].concept, rank=info.rank)
    atomic_write_text(directory / DONE_MARKER, f"{time.perf_counter() - started:.3f} s on rank {info.rank}\n")
    logger.info("rank %d: concept %d trained in %.1f s", info.rank, concept_id, time.perf_counter() - started)
    result.trained.append(concept_id)


# ============================================================================ command line


def build_parser() -> argparse.ArgumentParser:
    """`python -m easyedit_split.sharding`'s flags (`--model_name_or_path`: EasyEdit's spelling; `--set`: the
    parser `examples/run_split.py` uses too)."""
    parser = argparse.ArgumentParser(description="Train a multi-concept dataset's concepts across processes "
                                     "(run under `accelerate launch --num_processes N`), merged into EasyEdit's layout.")
    parser.add_argument("--hparams", required=True, help="a generate_<method>_<intervention>.yaml file")
    parser.add_argument("--data", required=True, help="multi-concept pairs (AxBench parquet, or any supported file)")
    parser.add_argument("--output-dir", required=True, help="method directory, e.g. vectors/<model>/axbench/<alg>_vector (EasyEdit's directory names)")
    parser.add_argument("--model_name_or_path", default=None, help="Hub id or checkpoint directory (default: the file's)")
    parser.add_argument("--offline", action="store_true", help="use the Hugging Face cache only (as HF_HUB_OFFLINE=1)")
    parser.add_argument("--timeout", type=float, default=24 * 3600.0,
                        help="seconds the ranks wait for the slowest one at the end (default 24 h); a crashed rank ends it at once")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per process (default: torch's)")
    parser.add_argument("--set", dest="overrides", action="append", type=parse_set_option, default=[], metavar="KEY=VALUE",
                        help="override a key of the hparams file (YAML value), like hydra's +key=value")
    return parser


def with_set_overrides(hparams: Any, overrides: Mapping[str, Any], source: str) -> Any:
    """`hparams` with the `--set` keys replaced; a key the file's class lacks is an error naming the closest one."""
    known = {f.name for f in fields(hparams) if f.init}
    for key in overrides:
        if key not in known:
            raise HparamsError(f"--set {key}: {source} ({hparams.alg_name}) has no key '{key}'{suggest(key, known)}")
    return replace(hparams, **overrides) if overrides else hparams


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    hparams = load_hparams(args.hparams, kind="train")
    overrides = dict(args.overrides)
    if args.model_name_or_path:
        overrides["model_name_or_path"] = args.model_name_or_path
    hparams = with_set_overrides(hparams, overrides, args.hparams)
    info = process_info()
    if info.world_size == 1 and os.environ.get("ACCELERATE_USE_CPU", "").lower() == "true":
        logger.warning("accelerate launch --cpu starts ONE process whatever --num_processes says (accelerate 1.x runs "
                       "CPU jobs without a distributed launcher); this run trains every concept itself. For N CPU "
                       "processes use: torchrun --nproc_per_node N -m easyedit_split.sharding ...")
    logger.info("rank %d/%d started (pid %d)", info.rank, info.world_size, os.getpid())
    if info.world_size > 1 and str(hparams.device) == "cuda":  # one GPU per process, as the launcher numbers them
        hparams = replace(hparams, device=f"cuda:{os.environ.get('LOCAL_RANK', info.rank)}")
    name = require_model_name(hparams.model_name_or_path, f"{args.hparams} (or --model_name_or_path)")
    model, tokenizer = load_model_and_tokenizer(name, hparams.dtype, hparams.device, offline=args.offline or None, override_weights_path=hparams.override_model_weights_path)
    pairs = load_dataset(args.data)
    result = train_sharded(hparams, pairs, model, tokenizer, args.output_dir, wait_timeout=args.timeout)
    logger.info("rank %d/%d: trained %s, skipped %s%s", result.rank, result.world_size, result.trained, result.skipped,
                f", merged into {args.output_dir}" if result.merged else "")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
