"""`easyedit-split`: the command line. The only place in the package that prints."""
from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import textwrap
from pathlib import Path
from typing import Optional, Sequence

from . import cli_evaluate
from .constants import COMPLETION_JOINS, DEFAULT_MODEL_NAME, DEFAULT_SWEEP, STEER_POSITIONS
from .errors import EasyEditSplitError, HparamsError, ModelError, MultiplierError, StorageError
from .hparams import HyperParams, load_hparams
from .multipliers import parse_multipliers


def multipliers_arg(text: str) -> list[float]:
    """argparse `type=` for multipliers: `multipliers.parse_multipliers`, errors as argparse errors."""
    try:
        return parse_multipliers(text)
    except MultiplierError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_output_dir(parser: argparse.ArgumentParser, default: Optional[str], help: str) -> None:
    """`--output-dir`, with the old `--out` kept as a hidden alias."""
    parser.add_argument("--output-dir", default=default, help=help)
    parser.add_argument("--out", dest="output_dir", default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def add_easyedit_dir(parser: argparse.ArgumentParser) -> None:
    """`--easyedit-dir`: read directories of ours that lack a complete manifest as EasyEdit's files."""
    parser.add_argument("--easyedit-dir", action="store_true",
                        help="load directories without a manifest.json as EasyEdit's files even if they hold our "
                             "metadata.json (EasyEdit's own directories need no flag); see docs/storage.md")


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """`--device`, `--dtype` and `--offline`, shared by the commands that load a model."""
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N or auto (spread over the GPUs with device_map); "
                        "default: the file's, else cpu")
    parser.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: the file's, else float32)")
    parser.add_argument("--offline", action="store_true",
                        help="use the Hugging Face cache only, never download (as HF_HUB_OFFLINE=1)")


def _print_demo(result) -> None:
    width = 60
    print(f"CAA vector from {result.n_pairs} sentiment pairs, layer {result.layer}, |v| = {result.vector_norm:.1f}\n")
    for index, prompt in enumerate(result.prompts):
        print(f"Prompt: {prompt}")
        columns = [textwrap.wrap(result.texts[m][index], width) or [""] for m in result.multipliers]
        headers = [f"m = {m:+g}" + (" (unsteered)" if m == 0 else "") for m in result.multipliers]
        print(" | ".join(h.ljust(width) for h in headers))
        print("-+-".join("-" * width for _ in headers))
        for line in range(max(len(c) for c in columns)):
            print(" | ".join((c[line] if line < len(c) else "").ljust(width) for c in columns))
        print()


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_main_job, run_steering_demo  # here, not at the top: `--help` should not wait for torch

    if args.quick:
        result = run_steering_demo(model_name_or_path=args.model, layer=args.layer, multipliers=args.multipliers,
                                   max_new_tokens=args.max_new_tokens)
        _print_demo(result)
        return 0
    from .storage.files import check_writable

    check_writable(args.output_dir, "report directory")  # before minutes of training
    print("Main job: CAA, SFT and SPLIT steering vectors on the default model (SmolLM2-135M-Instruct, CPU)\n", flush=True)
    job = run_main_job(out_dir=args.output_dir, model_name_or_path=args.model, multipliers=args.sweep,
                       manifold=not args.no_manifold)
    _print_demo(job.demo)
    print(job.report.markdown_table())
    if job.report.generation is not None:
        print(job.report.generation.markdown())
    print("Written:")
    for kind, path in job.written.items():
        print(f"  {kind}: {path}")
    print("Time: " + ", ".join(f"{step} {secs:.0f} s" for step, secs in job.seconds.items()))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .editor import SteerEditor  # here, not at the top: `--help` should not wait for torch
    from .easyedit_layout import intervention_dir
    from .storage.files import check_writable

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
    try:
        editor = SteerEditor.from_hparams(hparams, offline=args.offline or None, **overrides)
    except ModelError as error:  # a layer out of range, no model named: say which file
        raise type(error)(f"{args.hparams}: {error}") from None
    updates = editor.train(args.dataset, split=args.split, save=True, output_dir=args.output_dir)
    print(f"trained {editor.hparams.alg_name} at layers {sorted(updates)}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from .editor import SteerEditor  # here, not at the top: `--help` should not wait for torch

    from .model_choice import choose_model
    from .prompts import check_prompt_length
    from .steering import SteeringInterventions
    from .storage.units import load_interventions

    if args.concept_id < 0:
        raise StorageError(f"{args.vectors}: --concept-id must be >= 0, got {args.concept_id}")
    # a broken directory or file fails before the model loads (then shapes are checked against the model)
    load_interventions(args.vectors, concept_id=args.concept_id, allow_unmanifested=args.easyedit_dir)
    model = choose_model(args.model, None, [args.vectors], where=f"generate --vectors {args.vectors}")
    editor = SteerEditor(HyperParams(model_name_or_path=model, use_chat_template=not args.no_chat_template,
                                     device=args.device or "cpu", dtype=args.dtype or "float32"), offline=args.offline or None)
    if args.steer_positions:
        editor.prompt_format = dataclasses.replace(editor.prompt_format, steer_positions=args.steer_positions)
    editor.interventions = SteeringInterventions.load(args.vectors, concept_id=args.concept_id, model=editor.model,
                                                      allow_unmanifested=args.easyedit_dir)
    for prompt in args.prompt:
        check_prompt_length(editor.tokenizer, editor.prompt_format, prompt, editor.model, extra_tokens=args.max_new_tokens)
    texts = editor.generate(args.prompt, multipliers=args.multipliers, max_new_tokens=args.max_new_tokens)
    for m, outputs in texts.items():
        for prompt, text in zip(args.prompt, outputs):
            print(f"[m={m:+g}] {prompt}\n  {text}")
    return 0


def cmd_cache_model(args: argparse.Namespace) -> int:
    from .models import ensure_default_model_cached  # here, not at the top: `--help` should not wait for torch

    print(ensure_default_model_cached())
    return 0


def add_convention_flags(parser: argparse.ArgumentParser) -> None:
    """--steer-positions / --completion-join: override the hparams file's rules (docs/conventions.md)."""
    parser.add_argument("--steer-positions", choices=STEER_POSITIONS, default=None,
                        help="which positions are steered; default: the file's key, else easyedit")
    parser.add_argument("--completion-join", choices=COMPLETION_JOINS, default=None,
                        help="how completions follow the prompt; default: the file's key, else as_stored")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="easyedit-split", description="SPLIT steering and preference-utility analysis")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="the main job: CAA/SFT/SPLIT on the default model, generations and evaluation report")
    demo.add_argument("--model", default=DEFAULT_MODEL_NAME)
    demo.add_argument("--layer", type=int, default=15)
    demo.add_argument("--multipliers", type=multipliers_arg, default=None,
                      help="multipliers of the side-by-side generations, e.g. -2,0,2 or -4:4:2 (default -2,0,2)")
    demo.add_argument("--max-new-tokens", type=int, default=32)
    demo.add_argument("--quick", action="store_true", help="only the CAA generations, no training or evaluation")
    add_output_dir(demo, "outputs/demo", "where the evaluation report and plots go")
    demo.add_argument("--sweep", type=multipliers_arg, default=None,
                      help="multipliers of the evaluation sweep, e.g. -8:8:2 (default: the evaluator's sweep, "
                           f"{','.join(f'{m:g}' for m in DEFAULT_SWEEP)})")
    demo.add_argument("--no-manifold", action="store_true", help="skip the activation-manifold probe")
    demo.set_defaults(func=cmd_demo)

    train = sub.add_parser("train", help="train/generate interventions from an EasyEdit hparams file")
    train.add_argument("--hparams", required=True)
    train.add_argument("--dataset", default="sentiment")
    train.add_argument("--split", default="train")
    train.add_argument("--output-dir", default=None,
                       help="root of the saved files: <dir>/<dataset>/<alg>_<method>/layer_<L>.pt "
                            "(default: the file's steer_vector_output_dir, else the current directory)")
    train.add_argument("--model", default=None, help="Hub id, checkpoint directory or the default model's name "
                       f"({DEFAULT_MODEL_NAME}); default: the file's model_name_or_path (required in one of them)")
    add_model_options(train)
    add_convention_flags(train)
    train.add_argument("--fast-path-memory-mb", type=float, default=None,
                       help="memory budget (MiB) of the fast path's capture and reference passes; results do not "
                            "depend on it (default: the file's fast_path_memory_mb, else 2048)")
    train.set_defaults(func=cmd_train)

    generate = sub.add_parser("generate", help="generate with saved interventions at several multipliers")
    generate.add_argument("--vectors", required=True, help="directory with layer_<L>.pt files")
    generate.add_argument("--prompt", action="append", required=True)
    generate.add_argument("--multipliers", type=multipliers_arg, default=[0.0, 1.0], help="e.g. 0,1 or -2:2:1")
    generate.add_argument("--concept-id", type=int, default=0)
    generate.add_argument("--max-new-tokens", type=int, default=40)
    generate.add_argument("--model", default=None, help="Hub id, checkpoint directory or the default model's name "
                          f"({DEFAULT_MODEL_NAME}); default: the model recorded in the vectors' metadata.json")
    add_model_options(generate)
    generate.add_argument("--no-chat-template", action="store_true", help="prompt without the chat template")
    generate.add_argument("--steer-positions", choices=STEER_POSITIONS, default=None,
                          help="prompt positions steered (docs/conventions.md); default easyedit: every position")
    add_easyedit_dir(generate)
    generate.set_defaults(func=cmd_generate)

    cache = sub.add_parser("cache-model", help="convert the offline default model once and print its cache path")
    cache.set_defaults(func=cmd_cache_model)

    evaluate = sub.add_parser("evaluate", help="preference-utility evaluation over a multiplier sweep")
    cli_evaluate.add_arguments(evaluate)
    evaluate.set_defaults(func=cli_evaluate.run)
    return parser


def run_command(func, args: argparse.Namespace, verbose: bool = False) -> int:
    """Run one command with the CLI's error contract: a one-line message, never a traceback.

    The package's own errors (bad input, named file) exit 2; any other failure exits 1 (with
    the traceback only under `--verbose`); Ctrl-C exits 130. Writes are atomic and sealed by a
    manifest, so an interrupted command leaves no directory that loads half-written.
    """
    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted (Ctrl-C); nothing half-written was left loadable", file=sys.stderr)
        return 130
    except EasyEditSplitError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # anything else (a library's error on a bad file): one line, no traceback
        if verbose:
            import traceback

            traceback.print_exc()
        where = f" ({error.filename})" if isinstance(error, OSError) and error.filename and str(error.filename) not in str(error) else ""
        text = str(error).strip().splitlines()[0] if str(error).strip() else ""
        print(f"error: {type(error).__name__}{where}: {text}", file=sys.stderr)
        return 1


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except KeyboardInterrupt:
        print("interrupted (Ctrl-C)", file=sys.stderr)
        return 130
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return run_command(args.func, args, verbose=args.verbose)


if __name__ == "__main__":
    sys.exit(main())
