"""`easyedit-split`: the command line. The only place in the package that prints.

This module only dispatches: each command is a module (`train`, `generate`, `evaluate`, `demo` with
`cache-model`) with `add_arguments(parser)` and `run(args)`; the flags they share and the error
contract live in `common`, which the command modules import (never this module).
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Optional, Sequence

from . import demo, evaluate, generate, train
from .common import run_command


def build_parser() -> argparse.ArgumentParser:
    """The `easyedit-split` parser: one subcommand per command module."""
    parser = argparse.ArgumentParser(prog="easyedit-split", description="SPLIT steering and preference-utility analysis")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)
    commands = (
        ("demo", "the main job: CAA/SFT/SPLIT on the default model, generations and evaluation report",
         demo.add_arguments, demo.run),
        ("train", "train/generate interventions from an EasyEdit hparams file", train.add_arguments, train.run),
        ("generate", "generate with saved interventions at several multipliers", generate.add_arguments, generate.run),
        ("cache-model", "convert the offline default model once and print its cache path", None, demo.run_cache_model),
        ("evaluate", "preference-utility evaluation over a multiplier sweep", evaluate.add_arguments, evaluate.run),
    )
    for name, help_text, add_arguments, run in commands:
        command = sub.add_parser(name, help=help_text)
        if add_arguments is not None:
            add_arguments(command)
        command.set_defaults(func=run)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The console script `easyedit-split`: parse, run the command under `common.run_command`'s error contract."""
    try:
        args = build_parser().parse_args(argv)
    except KeyboardInterrupt:
        print("interrupted (Ctrl-C)", file=sys.stderr)
        return 130
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return run_command(args.func, args, verbose=args.verbose)
