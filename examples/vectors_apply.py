#!/usr/bin/env python3
"""Apply saved interventions and generate, from EasyEdit's top-level hydra config, in-process.

    python examples/vectors_apply.py                                      # hparams/apply_config.yaml
    python examples/vectors_apply.py '+multipliers=[4.0]' generation_data_size=5

Same keys as EasyEdit's `vectors_apply.py` (config path `../hparams`, config name `apply_config`):
every `apply_steer_hparam_paths[i]` is loaded from `steer_vector_load_dir[i]` and all of them are
applied together; each `generation_data` set is generated with `generation_params`
(`num_responses` per prompt, the unsteered output too with `generate_orig_output`) and written to
`generation_output_dir/<dataset>_results.json` in EasyEdit's record format.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

import hydra
from omegaconf import DictConfig

from easyedit_split.hparams import TopLevelConfig
from easyedit_split.integrations import pipeline
from easyedit_split.prompts import PromptFormat

try:
    from vectors_generate import base_dir_for  # run as a script from examples/
except ImportError:  # imported as examples.vectors_apply
    from examples.vectors_generate import base_dir_for

logger = logging.getLogger("vectors_apply")


def apply_and_generate(top_cfg: Any, model: Any = None, tokenizer: Any = None) -> dict:
    """Apply every apply file, generate on every `generation_data` set: {dataset: [records]}."""
    top = top_cfg if isinstance(top_cfg, TopLevelConfig) else TopLevelConfig.from_hparams(top_cfg)
    base = base_dir_for(top.apply_steer_hparam_paths)
    pool = pipeline.ModelPool(model, tokenizer)
    applied = top.load_apply_hparams(base)
    if not applied:
        raise SystemExit("apply_steer_hparam_paths is empty: nothing to apply")
    hf_model, hf_tokenizer = pool.get(applied[0])
    update_sets = [pipeline.load_apply_updates(hf_model, hparams) for hparams in applied]
    fmt = PromptFormat.from_hparams(top.merge_into(applied[0]))
    outputs = {}
    for dataset in top.generation_data:
        examples = pipeline.load_prompts(dataset, base, size=top.generation_data_size)
        records = pipeline.generate_results(hf_model, hf_tokenizer, fmt, examples, update_sets, top.generation_params,
                                            top.num_responses, top.generate_orig_output, seed=top.seed)
        if top.generation_output_dir:
            path = pipeline.write_generation_results(records, top.generation_output_dir, Path(str(dataset)).stem)
            logger.info("%s: %d generations -> %s", dataset, len(records), path)
        outputs[dataset] = records
    return outputs


@hydra.main(version_base="1.2", config_path="../hparams", config_name="apply_config")
def main(top_cfg: DictConfig) -> Optional[dict]:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return apply_and_generate(top_cfg)


if __name__ == "__main__":
    main()
