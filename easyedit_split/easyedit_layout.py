"""EasyEdit's names and places, in one module: where its data live, what a dataset is called, where
method directories and the experiment tree's files go, and the name of a layer file.

Nothing here loads torch: configuration code, the command line and the EasyEdit pipeline read it cheaply.

- Data files: EasyEdit's `hparams/Steer/dataset_format.yaml` tables, relative to its checkout.
- Dataset names: EasyEdit keeps a dataset's files in `data/<dataset>/` (`data/psychopathy/train.jsonl`)
  and names the outputs after `<dataset>`, not after the file (`train`). Metadata records that name
  as one string, also when a top-level config gives a list of names.
- Method directories: `<steer_vector_output_dir>/<dataset>/<alg>_<intervention_method>/layer_<L>.pt`
  (CAA: `caa_vector/`), `<alg>` in EasyEdit's spelling (`constants.easyedit_alg_dir_name`).
- The experiment tree of EasyEdit's `examples/run_SPILT.py`, so that the pipeline
  (`integrations.pipeline`, `examples/run_split.py`) reads and writes the same places:

      vectors/<model>/<method>/<dataset>/<method>_<intervention>/layer_<L>.pt         (CAA: caa_vector/)
      generation/<model>/<method>/<dataset>/<method>_<intervention>/m<m>/<data>_results.json
      vectors/<model>/get_sft_loss/<method>/<dataset>/<method>_<intervention>/
          <intervention>_<method>_m<m>_<winning_only|losing_only>/train_losses.csv
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

from .constants import PathLike, easyedit_alg_dir_name
from .errors import StorageError
from .storage.files import check_inside

# ----------------------------------------------------------------------------- EasyEdit's data files

# EasyEdit's hparams/Steer/dataset_format.yaml: where its datasets live, relative to its checkout.
EASYEDIT_TRAIN_FILES = {
    "psychopathy": "data/psychopathy/train.jsonl",
    "powerseeking": "data/powerseeking/train.csv",
    "axbench": "data/axbench/prod_9b_l20_v1/generate/dpo_train_data.parquet",
    "axbench_train": "data/axbench/axbench_train.parquet",
}
EASYEDIT_TEST_FILES = {
    "psychopathy": "data/psychopathy/test.jsonl",
    "axbench": "data/axbench/axbench_test.parquet",
    "axbench_test": "data/axbench/axbench_test.parquet",
}
EASYEDIT_GENERATION_FILES = {
    "psychopathy": "data/psychopathy/test.jsonl",
    "axbench": "data/axbench/alpaca_eval.json",
    "axbench_test": "data/axbench/axbench_test.parquet",
}
DATA_ROOT = "data"
"""The directory of EasyEdit's checkout that holds one subdirectory per dataset."""


def easyedit_data_file(table: Mapping[str, str], dataset: str, base_dir: PathLike) -> Optional[Path]:
    """Where EasyEdit keeps `dataset` (one of the tables above) under its checkout `base_dir`; None if not listed."""
    relative = table.get(dataset)
    return Path(base_dir) / relative if relative else None


# ----------------------------------------------------------------------------- dataset names


def dataset_name(source: PathLike) -> str:
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


# ----------------------------------------------------------------------------- method directories and layer files

CAA_LEAF = "caa_vector"
"""CAA's method directory, whatever the intervention method asked for: CAA only makes vectors."""
LAYER_FILE_NAME = re.compile(r"^layer_(\d+)\.pt$")
"""EasyEdit's name of one layer's file, `layer_<L>.pt`."""


def layer_file(directory: PathLike, layer: int) -> Path:
    """`<directory>/layer_<L>.pt`: where EasyEdit keeps (and looks for) one layer's intervention."""
    return Path(directory) / f"layer_{layer}.pt"


def intervention_dir(output_dir: PathLike, dataset: Optional[str], alg_name: str, intervention_method: str = "vector") -> Path:
    """EasyEdit's directory for one method's files: `<out>/<dataset>/<alg>_<method>` (CAA: `caa_vector`).

    The dataset name must keep the directory inside `output_dir` (no `..`, no absolute path).
    """
    if dataset is not None and (not str(dataset).strip() or Path(str(dataset)).is_absolute()):
        raise StorageError(f"dataset name {dataset!r}: not usable as a directory name under {output_dir}")
    base = Path(output_dir) / dataset if dataset else Path(output_dir)
    directory = base / vector_subdir(alg_name, intervention_method)
    if dataset:
        check_inside(output_dir, base, f"dataset name {dataset!r}")
    return directory


# ----------------------------------------------------------------------------- EasyEdit's experiment tree

# <method> is EasyEdit's directory name (`constants.easyedit_alg_dir_name`: SPLIT is `spilt`).
EASYEDIT_EXPERIMENT_DIR = Path("hparams/Steer/experiment_hparams") / f"{easyedit_alg_dir_name('split')}_experiment"
"""EasyEdit's hparams tree of the SPLIT experiments, relative to its checkout."""
LOSS_CSV_NAME = "train_losses.csv"
PER_EXAMPLE_CSV_NAME = "per_example_nll.csv"


def vector_subdir(method: str, intervention_method: str) -> str:
    """`<method>_<intervention>`, or `caa_vector` for CAA (EasyEdit's names; SPLIT is `spilt`, so its appliers find the files)."""
    method = easyedit_alg_dir_name(method)
    return CAA_LEAF if method == "caa" else f"{method}_{intervention_method}"


def experiment_vectors_dir(output_root: PathLike, model_name: str, method: str, dataset: str, intervention_method: str) -> Path:
    """`vectors/<model>/<method>/<dataset>/<method>_<intervention>/`: where the generate step writes."""
    method = easyedit_alg_dir_name(method)
    return Path(output_root) / "vectors" / model_name / method / dataset / vector_subdir(method, intervention_method)


def experiment_generation_dir(output_root: PathLike, model_name: str, method: str, dataset: str, intervention_method: str,
                              multiplier: float) -> Path:
    """`generation/<model>/<method>/<dataset>/<method>_<intervention>/m<m>/`: where the apply step writes."""
    method = easyedit_alg_dir_name(method)
    return (Path(output_root) / "generation" / model_name / method / dataset / f"{method}_{intervention_method}"
            / f"m{multiplier}")


def loss_output_dir(output_root: PathLike, model_name: str, method: str, dataset: str, intervention_method: str,
                    multiplier: float, preference_type: str) -> Path:
    """`vectors/<model>/get_sft_loss/.../<intervention>_<method>_m<m>_<preference>/`: where the loss step writes."""
    method = easyedit_alg_dir_name(method)
    leaf = f"{intervention_method}_{method}_m{multiplier}_{preference_type}"
    return Path(output_root) / "vectors" / model_name / "get_sft_loss" / method / dataset / f"{method}_{intervention_method}" / leaf


def hparams_roots(base_dir: PathLike) -> list[Path]:
    """Where method directories are looked up: this package's `hparams/` and EasyEdit's tree."""
    base = Path(base_dir)
    return [base / "hparams", base / EASYEDIT_EXPERIMENT_DIR]


def _first_existing(candidates: Iterable[Path]) -> Optional[Path]:
    for path in candidates:
        if path.is_file():
            return path
    return None


def find_train_hparams(base_dir: PathLike, dataset: str, model_name: str, method: str, intervention_method: str) -> Optional[Path]:
    """The generate file for (dataset, model, method, intervention), with EasyEdit's legacy names."""
    method = easyedit_alg_dir_name(method)
    candidates = []
    for root in hparams_roots(base_dir):
        leaf = root / dataset / model_name / method
        candidates.append(leaf / f"generate_{method}_{intervention_method}.yaml")
        if intervention_method == "local_weight":
            candidates.append(leaf / f"generate_{method}_weight.yaml")
        if method == "caa":
            candidates.append(leaf / "generate_caa.yaml")
    return _first_existing(candidates)


def find_apply_hparams(base_dir: PathLike, dataset: str, model_name: str, method: str) -> Optional[Path]:
    """The apply file for (dataset, model, method): `apply_<method>.yaml` or `apply.yaml`."""
    method = easyedit_alg_dir_name(method)
    return _first_existing(
        root / dataset / model_name / method / name
        for root in hparams_roots(base_dir) for name in (f"apply_{method}.yaml", "apply.yaml")
    )


def find_loss_hparams(base_dir: PathLike, dataset: str, model_name: str) -> Optional[Path]:
    """EasyEdit's SFT loss-mode file, `sft/generate_sft_loss.yaml`."""
    return _first_existing(root / dataset / model_name / "sft" / "generate_sft_loss.yaml" for root in hparams_roots(base_dir))
