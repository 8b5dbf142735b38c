"""`easyedit-split`: the command line. The only place in the package that prints."""
from __future__ import annotations

import argparse
import logging
import sys
import textwrap
from typing import Optional, Sequence

from . import cli_evaluate
from .constants import DEFAULT_MODEL_NAME, DEFAULT_SWEEP
from .errors import EasyEditSplitError
from .hparams import HyperParams
from .multipliers import MultiplierError, parse_multipliers


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
    print("Main job: CAA, SFT and SPLIT steering vectors on the default model (SmolLM2-135M-Instruct, CPU)\n", flush=True)
    job = run_main_job(out_dir=args.output_dir, model_name_or_path=args.model, multipliers=args.sweep,
                       manifold=not args.no_manifold)
    _print_demo(job.demo)
    print(job.report.markdown_table())
    print("Written:")
    for kind, path in job.written.items():
        print(f"  {kind}: {path}")
    print("Time: " + ", ".join(f"{step} {secs:.0f} s" for step, secs in job.seconds.items()))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .editor import SteerEditor  # here, not at the top: `--help` should not wait for torch

    overrides = {key: value for key, value in (("model_name_or_path", args.model), ("device", args.device),
                                               ("dtype", args.dtype)) if value}
    editor = SteerEditor.from_hparams(args.hparams, offline=args.offline or None, **overrides)
    updates = editor.train(args.dataset, split=args.split, save=True, output_dir=args.output_dir)
    print(f"trained {editor.hparams.alg_name} at layers {sorted(updates)}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from .editor import SteerEditor  # here, not at the top: `--help` should not wait for torch

    from .model_choice import choose_model

    model = choose_model(args.model, None, [args.vectors], where=f"generate --vectors {args.vectors}")
    editor = SteerEditor(HyperParams(model_name_or_path=model, use_chat_template=not args.no_chat_template,
                                     device=args.device or "cpu", dtype=args.dtype or "float32"), offline=args.offline or None)
    editor.load(args.vectors, concept_id=args.concept_id)
    texts = editor.generate(args.prompt, multipliers=args.multipliers, max_new_tokens=args.max_new_tokens)
    for m, outputs in texts.items():
        for prompt, text in zip(args.prompt, outputs):
            print(f"[m={m:+g}] {prompt}\n  {text}")
    return 0


def cmd_cache_model(args: argparse.Namespace) -> int:
    from .models import ensure_default_model_cached  # here, not at the top: `--help` should not wait for torch

    print(ensure_default_model_cached())
    return 0


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
    generate.set_defaults(func=cmd_generate)

    cache = sub.add_parser("cache-model", help="convert the offline default model once and print its cache path")
    cache.set_defaults(func=cmd_cache_model)

    evaluate = sub.add_parser("evaluate", help="preference-utility evaluation over a multiplier sweep")
    cli_evaluate.add_arguments(evaluate)
    evaluate.set_defaults(func=cli_evaluate.run)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except EasyEditSplitError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
