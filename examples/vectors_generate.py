#!/usr/bin/env python3
"""Generate (train) interventions from EasyEdit's top-level hydra config, in-process.

    python examples/vectors_generate.py                                   # hparams/config.yaml
    python examples/vectors_generate.py steer_train_dataset=food '+steering_factors=[2.0]'

Same keys as EasyEdit's `vectors_generate.py` (config path `../hparams`, config name `config`):
`steer_train_hparam_paths[i]` is trained on each `steer_train_dataset` and written to
`steer_vector_output_dirs[i]/<dataset>/<alg>_<intervention_method>/layer_<L>.pt`. Model keys at the
top level (`model_name_or_path`, `dtype`, `device`, `seed`, `use_chat_template`, ...) override
each method file's, and `+key=value` overrides any method-file key, as in EasyEdit.
Relative paths are read from the working directory, then from the repository root.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

import hydra
from omegaconf import DictConfig

from easyedit_split.hparams import TopLevelConfig
from easyedit_split.integrations import pipeline
from easyedit_split.producing import train_to_dir

REPO_ROOT = Path(__file__).resolve().parent.parent
logger = logging.getLogger("vectors_generate")


def base_dir_for(paths: list) -> Path:
    """The directory relative paths are read from: the working directory if they exist there, else the repo root."""
    return Path.cwd() if all((Path.cwd() / p).exists() for p in paths) else REPO_ROOT


def generate(top_cfg: Any, model: Any = None, tokenizer: Any = None) -> dict:
    """Train every method file on every dataset: {dataset: {alg_name: {layer: update}}}."""
    top = top_cfg if isinstance(top_cfg, TopLevelConfig) else TopLevelConfig.from_hparams(top_cfg)
    base = base_dir_for(top.steer_train_hparam_paths)
    pool = pipeline.ModelPool(model, tokenizer)
    datasets = top.steer_train_dataset if isinstance(top.steer_train_dataset, list) else [top.steer_train_dataset]
    generated: dict = {}
    for dataset in datasets:
        pairs = pipeline.load_pairs(dataset, base)
        generated[dataset] = {}
        for hparams in top.load_train_hparams(base):
            hf_model, hf_tokenizer = pool.get(hparams)
            directory, updates = train_to_dir(hparams, pairs, hf_model, hf_tokenizer,
                                                       hparams.steer_vector_output_dir if top.save_vectors else None, dataset)
            logger.info("%s on %s (%d pairs) -> %s", hparams.alg_name, dataset, len(pairs), directory or "(not saved)")
            generated[dataset][hparams.alg_name] = updates
    return generated


@hydra.main(version_base="1.2", config_path="../hparams", config_name="config")
def main(top_cfg: DictConfig) -> Optional[dict]:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return generate(top_cfg)


if __name__ == "__main__":
    main()
