"""`easyedit-split generate`: generate with saved interventions at several multipliers."""
from __future__ import annotations

import argparse
import dataclasses

from ..errors import StorageError
from ..hparams import HyperParams
from .common import add_shared_flags
from .vectors import check_against_model, choose_model, load_vectors


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`generate`'s flags, the shared ones from `common.SHARED_FLAGS`."""
    parser.add_argument("--vectors", required=True, help="directory with layer_<L>.pt files")
    parser.add_argument("--prompt", action="append", required=True)
    add_shared_flags(parser, "--multipliers", multipliers=[0.0, 1.0])
    add_shared_flags(parser, "--concept-id", concept_id=0)
    add_shared_flags(parser, "--max-new-tokens", max_new_tokens=40)
    add_shared_flags(parser, "--model", "--device", "--dtype", "--offline", "--no-chat-template", "--steer-positions",
                     "--easyedit-dir")


def run(args: argparse.Namespace) -> int:
    """Load the vectors once, then the model; print each prompt's text at each multiplier."""
    from ..editor import SteerEditor  # here, not at the top: `--help` should not wait for torch
    from ..prompts import check_prompt_length
    from ..steering import SteeringInterventions

    if args.concept_id < 0:
        raise StorageError(f"{args.vectors}: --concept-id must be >= 0, got {args.concept_id}")
    # a broken directory or file fails before the model loads (then shapes are checked against the model)
    vectors = load_vectors(args.vectors, concept_id=args.concept_id, allow_unmanifested=args.easyedit_dir)
    model = choose_model(args.model, None, [vectors], where=f"generate --vectors {args.vectors}")
    editor = SteerEditor(HyperParams(model_name_or_path=model, use_chat_template=not args.no_chat_template,
                                     device=args.device or "cpu", dtype=args.dtype or "float32"), offline=args.offline or None)
    if args.steer_positions:
        editor.prompt_format = dataclasses.replace(editor.prompt_format, steer_positions=args.steer_positions)
    check_against_model(vectors, editor.model)
    editor.interventions = SteeringInterventions(vectors.updates, concept_id=args.concept_id)
    for prompt in args.prompt:
        check_prompt_length(editor.tokenizer, editor.prompt_format, prompt, editor.model, extra_tokens=args.max_new_tokens)
    texts = editor.generate(args.prompt, multipliers=args.multipliers, max_new_tokens=args.max_new_tokens)
    for m, outputs in texts.items():
        for prompt, text in zip(args.prompt, outputs):
            print(f"[m={m:+g}] {prompt}\n  {text}")
    return 0
