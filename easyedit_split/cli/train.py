"""`easyedit-split train`: train interventions from an EasyEdit hparams file and save them in EasyEdit's layout."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import HparamsError, ModelError
from ..hparams import load_hparams
from .common import add_shared_flags


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`train`'s flags, the shared ones from `common.SHARED_FLAGS`."""
    parser.add_argument("--hparams", required=True, help="a method's generate file (EasyEdit's keys)")
    add_shared_flags(parser, "--dataset", dataset="sentiment")
    add_shared_flags(parser, "--split", split="train")
    add_shared_flags(parser, "--output-dir", "--model", "--device", "--dtype", "--offline", "--steer-positions",
                     "--completion-join", "--fast-path-memory-mb")


def run(args: argparse.Namespace) -> int:
    """Train, save under --output-dir, print the trained layers.

    Order: everything cheap is checked before the model loads (hparams, output directory, the
    dataset file and its rows, the override weights file); every row is checked against the
    model's context before any training work.
    """
    from ..data import load_dataset  # here, not at the top: `--help` should not wait for torch
    from ..editor import SteerEditor
    from ..easyedit_layout import dataset_label, intervention_dir
    from ..errors import DatasetError
    from ..models import check_override_file
    from ..prompts import check_completion_length
    from ..storage.files import check_writable

    hparams = load_hparams(args.hparams)
    overrides = {key: value for key, value in (("model_name_or_path", args.model), ("device", args.device),
                                               ("dtype", args.dtype)) if value}
    overrides.update({key: getattr(args, key) for key in ("steer_positions", "completion_join") if getattr(args, key)})
    output_root = args.output_dir or getattr(hparams, "steer_vector_output_dir", None) or "."
    # before the model loads: the output must be writable and the dataset's name must keep it inside
    check_writable(output_root)
    intervention_dir(output_root, Path(str(args.dataset)).stem, hparams.alg_name)
    if args.fast_path_memory_mb is not None:
        if not hasattr(hparams, "fast_path_memory_mb"):
            raise HparamsError(f"--fast-path-memory-mb: {args.hparams} trains {hparams.alg_name}, which has no fast path")
        overrides["fast_path_memory_mb"] = args.fast_path_memory_mb
    pairs = load_dataset(args.dataset, split=args.split)  # a bad data file fails before the model loads
    if hparams.override_model_weights_path:
        try:
            check_override_file(hparams.override_model_weights_path)
        except ModelError as error:
            raise ModelError(f"{args.hparams}: {error}") from None
    try:
        editor = SteerEditor.from_hparams(hparams, offline=args.offline or None, **overrides)
    except ModelError as error:  # a layer out of range, no model named, a bad override file: say which file
        raise type(error)(f"{args.hparams}: {error}") from None
    for index, pair in enumerate(pairs):  # a row longer than the model's context fails now, naming it
        for completion in (pair.matching, pair.not_matching):
            try:
                check_completion_length(editor.tokenizer, editor.prompt_format, pair.question, completion, editor.model)
            except DatasetError as error:
                raise DatasetError(f"{args.dataset} ({args.split}), pair {index}: {error}") from None
    updates = editor.train(pairs, save=True, output_dir=args.output_dir, dataset_name=dataset_label(args.dataset))
    print(f"trained {editor.hparams.alg_name} at layers {sorted(updates)}")
    return 0
