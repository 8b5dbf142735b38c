"""The name a dataset is saved and recorded under, as EasyEdit names it.

EasyEdit keeps a dataset's files in `data/<dataset>/` (`data/psychopathy/train.jsonl`) and names the
outputs after `<dataset>`, not after the file (`train`). Metadata records that name as one string,
also when a top-level config gives a list of names.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Union

from .data import EASYEDIT_GENERATION_FILES, EASYEDIT_TEST_FILES, EASYEDIT_TRAIN_FILES

DATA_ROOT = "data"


def dataset_name(source: Union[str, Path]) -> str:
    """`psychopathy` for `.../data/psychopathy/train.jsonl` (and any file EasyEdit's tables list, by its
    key); `<dir>` for any file directly in `data/<dir>/`; otherwise the file's stem; names stay names."""
    text = str(source).replace("\\", "/")
    path = Path(text)
    if not path.suffix:
        return path.name or text
    for table in (EASYEDIT_TRAIN_FILES, EASYEDIT_TEST_FILES, EASYEDIT_GENERATION_FILES):
        for name, relative in table.items():
            if text == relative or text.endswith("/" + relative):
                return name
    if path.parent.parent.name == DATA_ROOT and path.parent.name:
        return path.parent.name
    return path.stem


def dataset_label(dataset: Any) -> str:
    """One string for metadata: a name or path as `dataset_name`, a list of names joined by `+`."""
    if type(dataset).__name__ == "ListConfig" or isinstance(dataset, (list, tuple)):
        return "+".join(dataset_label(item) for item in dataset)
    return dataset_name(dataset)
