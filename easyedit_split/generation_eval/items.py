"""The prompts a generation-side evaluation answers, each labelled ``dev`` or ``test``.

Factor selection (AxBench) picks each method's multiplier on a development split and reports the
test split at that multiplier, so every prompt belongs to exactly one of the two. A dataset with a
dev split of its own names it (`dev_split=`); otherwise the evaluated prompts are divided
deterministically (`dev_fraction`, `seed`), as `data.split_pairs` divides pairs.

Any of the package's datasets works: polarity pairs (the project's datasets, psychopathy,
power-seeking, AxBench) keep their ``matching`` / ``not_matching`` answers, which answer accuracy
reads; EasyEdit's generation files (``input`` / ``reference_response``) give prompts only.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence, Union

from ..data import GenerationExample, PolarityPair, load_dataset, load_generation_data
from ..errors import DatasetError

SPLITS = ("dev", "test")


@dataclass(frozen=True)
class GenerationItem:
    """One prompt to answer: `index` is unique within a run (it keys the results), `split` is dev or test."""

    index: int
    split: str
    input: str
    reference_response: Optional[str] = None
    matching: Optional[str] = None
    not_matching: Optional[str] = None
    concept: Optional[str] = None
    concept_id: int = 0


def _item(index: int, split: str, record: Any) -> GenerationItem:
    if isinstance(record, GenerationItem):
        return replace(record, index=index, split=split)
    if isinstance(record, PolarityPair):
        return GenerationItem(index, split, record.question, record.matching, record.matching, record.not_matching,
                              record.concept, record.concept_id)
    if isinstance(record, GenerationExample):
        return GenerationItem(index, split, record.input, record.reference_response, concept=record.concept,
                              concept_id=record.concept_id)
    if isinstance(record, str):
        return GenerationItem(index, split, record)
    raise TypeError(f"generation item {index}: expected a prompt string, PolarityPair, GenerationExample or "
                    f"GenerationItem, got {type(record).__name__}")


def dev_test_labels(n: int, dev_fraction: float, seed: int = 0) -> list[str]:
    """``round(n * dev_fraction)`` of `n` positions (at least one, at most n - 1 when n >= 2) are dev, chosen by `seed`."""
    if not 0.0 <= dev_fraction < 1.0:
        raise ValueError(f"dev_fraction must be in [0, 1), got {dev_fraction}")
    if dev_fraction == 0.0 or n < 2:
        return ["test"] * n
    n_dev = min(max(round(n * dev_fraction), 1), n - 1)
    dev = set(random.Random(seed).sample(range(n), n_dev))
    return ["dev" if i in dev else "test" for i in range(n)]


def make_items(records: Sequence[Any], dev_fraction: float = 0.5, seed: int = 0,
               dev_records: Optional[Sequence[Any]] = None) -> list[GenerationItem]:
    """Label `records` dev/test: `dev_records` are the dev split when given, else a `dev_fraction` share of `records`.

    Records that already are `GenerationItem`s keep their labels when neither option applies.
    """
    records = list(records)
    if dev_records is not None:
        test = [_item(i, "test", r) for i, r in enumerate(records)]
        dev = [_item(len(test) + i, "dev", r) for i, r in enumerate(dev_records)]
        return dev + test
    if records and all(isinstance(r, GenerationItem) for r in records) and dev_fraction == 0.0:
        return [replace(r, index=i) for i, r in enumerate(records)]
    labels = dev_test_labels(len(records), dev_fraction, seed)
    return [_item(i, label, r) for i, (r, label) in enumerate(zip(records, labels))]


def _load_records(dataset: Union[str, Path], split: str, dataset_format: Optional[str]) -> list[Any]:
    """Polarity pairs when the data has both answers (answer accuracy needs them), else generation prompts."""
    try:
        return list(load_dataset(dataset, split=split, dataset_format=dataset_format))
    except DatasetError as pair_error:
        try:
            return list(load_generation_data(dataset, split=split, dataset_format=dataset_format))
        except DatasetError as generation_error:
            raise DatasetError(f"{dataset} ({split}): neither polarity pairs ({pair_error}) nor generation prompts "
                               f"({generation_error})") from generation_error


def load_generation_items(
    dataset: Union[str, Path],
    split: str = "test",
    dataset_format: Optional[str] = None,
    dev_split: Optional[str] = None,
    dev_fraction: float = 0.5,
    max_items: Optional[int] = None,
    concept_id: Optional[int] = None,
    seed: int = 0,
) -> list[GenerationItem]:
    """Prompts of `dataset` (name, directory or file in any of the package's formats), labelled dev/test.

    `concept_id` keeps one concept of multi-concept data; `max_items` keeps the first prompts of each split.
    """
    def chosen(records: Iterable[Any]) -> list[Any]:
        records = [r for r in records if concept_id is None or getattr(r, "concept_id", 0) == concept_id]
        return records[:max_items] if max_items else records

    records = chosen(_load_records(dataset, split, dataset_format))
    if not records:
        raise DatasetError(f"{dataset} ({split}): no prompts" + (f" with concept_id {concept_id}" if concept_id is not None else ""))
    dev_records = chosen(_load_records(dataset, dev_split, dataset_format)) if dev_split else None
    return make_items(records, dev_fraction, seed, dev_records)
