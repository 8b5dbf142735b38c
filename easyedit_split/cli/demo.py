"""`easyedit-split demo` (the main job on the offline default model) and `cache-model` (convert that model once)."""
from __future__ import annotations

import argparse
import textwrap
from typing import Any

from ..constants import DEFAULT_MODEL_NAME, DEFAULT_SWEEP
from .common import add_shared_flags, multipliers_arg, number_arg


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`demo`'s flags, the shared ones from `common.SHARED_FLAGS`."""
    add_shared_flags(parser, "--model", model=DEFAULT_MODEL_NAME)
    parser.add_argument("--layer", type=number_arg(int, 0, 100_000), default=15)
    add_shared_flags(parser, "--multipliers")
    add_shared_flags(parser, "--max-new-tokens", max_new_tokens=32)
    parser.add_argument("--quick", action="store_true", help="only the CAA generations, no training or evaluation")
    add_shared_flags(parser, "--output-dir", output_dir="outputs/demo")
    parser.add_argument("--sweep", type=multipliers_arg, default=None,
                        help="multipliers of the evaluation sweep, e.g. -8:8:2 (default: the evaluator's sweep, "
                             f"{','.join(f'{m:g}' for m in DEFAULT_SWEEP)})")
    add_shared_flags(parser, "--no-manifold")


def _print_demo(result: Any) -> None:
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


def run(args: argparse.Namespace) -> int:
    """The main job (or `--quick`: the CAA generations only), printed."""
    from ..demo import run_main_job, run_steering_demo  # here, not at the top: `--help` should not wait for torch

    if args.quick:
        result = run_steering_demo(model_name_or_path=args.model, layer=args.layer, multipliers=args.multipliers,
                                   max_new_tokens=args.max_new_tokens)
        _print_demo(result)
        return 0
    from ..storage.files import check_writable

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


def run_cache_model(args: argparse.Namespace) -> int:
    """Convert the offline default model once; print its cache directory."""
    from ..models import ensure_default_model_cached  # here, not at the top: `--help` should not wait for torch

    print(ensure_default_model_cached())
    return 0
