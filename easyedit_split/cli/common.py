"""What every command shares: the shared flags (declared once), the value parsers and the error contract.

No torch here: `easyedit-split --help`, `examples/run_split.py` and `python -m easyedit_split.sharding`
import this module, and the first should not wait for torch.
"""
from __future__ import annotations

import argparse
import math
import sys
from typing import Any, Callable, Sequence, Union


from ..constants import COMPLETION_JOINS, DEFAULT_MODEL_NAME, STEER_POSITIONS
from ..errors import EasyEditSplitError, MultiplierError, excerpt
from ..multipliers import parse_multipliers

ArgumentTarget = Union[argparse.ArgumentParser, argparse._ArgumentGroup]
"""Where a flag is declared: a (sub)parser or one of its argument groups."""


class CommandError(EasyEditSplitError):
    """A command's input is wrong: `run_command` prints the message on one line and exits 2."""


def run_command(func: Callable[[argparse.Namespace], Any], args: argparse.Namespace, verbose: bool = False) -> int:
    """Run one command with the CLI's error contract: a one-line message on stderr, never a traceback.

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
        text = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""  # bounded: errors may quote input
        print(f"error: {type(error).__name__}{where}: {text}", file=sys.stderr)
        return 1


# ============================================================================ values


def number_arg(kind: type, minimum: float, maximum: float, *, above: bool = False) -> Callable[[str], Any]:
    """argparse `type=` for a numeric flag: `kind` (int or float), finite, in [minimum, maximum]
    ((minimum, maximum] with `above`). argparse prefixes the message with the flag's name."""
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except (ValueError, OverflowError):
            raise argparse.ArgumentTypeError(f"{excerpt(text)} is not {'an integer' if kind is int else 'a number'}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{excerpt(text)} is not a finite number")
        if value < minimum or (above and value == minimum) or value > maximum:
            low = f"greater than {kind(minimum)}" if above else f"at least {kind(minimum)}"
            raise argparse.ArgumentTypeError(f"{excerpt(text)} is out of range: must be {low} and at most {kind(maximum)}")
        return value
    parse.__name__ = kind.__name__  # argparse names the type in its 'invalid <type> value' message
    return parse


MAX_COUNT = 2**31 - 1
"""Largest count a flag takes (examples, resamples, tokens, ids): larger is a typo, and torch's ints end there."""
MAX_MEMORY_MB = float(1 << 30)
"""Largest --fast-path-memory-mb (1 PiB): larger is a typo (hparams/methods.py has the same bound)."""


def multipliers_arg(text: str) -> list[float]:
    """argparse `type=` for multipliers: `multipliers.parse_multipliers`, errors as argparse errors."""
    try:
        return parse_multipliers(text)
    except MultiplierError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def parse_set_option(text: str) -> tuple[str, Any]:
    """argparse `type=` of `--set KEY=VALUE` (VALUE read as YAML; a leading `+` as in hydra's `+key=value` is dropped).

    The one `--set` parser: `examples/run_split.py` and `python -m easyedit_split.sharding` both use it.
    """
    key, sep, value = text.partition("=")
    key = key.strip().lstrip("+")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--set '{text}': use KEY=VALUE (VALUE in YAML, e.g. layers=[2])")
    from ..errors import HparamsError
    from ..hparams.reading import bounded_safe_load  # bounded: no alias bombs from the command line either

    try:
        return key, bounded_safe_load(value, f"--set {key}")
    except HparamsError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


# ============================================================================ the shared flags

SHARED_FLAGS: dict[str, dict[str, Any]] = {
    "--model": dict(default=None, help=(
        f"Hub id, checkpoint directory or the default model's name ({DEFAULT_MODEL_NAME}). Left out: train and "
        "evaluate take the hparams file's model_name_or_path, generate and evaluate the model recorded in the "
        f"vectors' metadata.json (one of them is required); demo runs {DEFAULT_MODEL_NAME}")),
    "--device": dict(default=None, help=(
        "cpu, cuda, cuda:N or auto (spread over the GPUs with device_map); default: the hparams file's, else cpu")),
    "--dtype": dict(default=None, help="float32, bfloat16 or float16; default: the hparams file's, else float32"),
    "--offline": dict(action="store_true",
                      help="use the Hugging Face cache only, never download (as HF_HUB_OFFLINE=1)"),
    "--steer-positions": dict(choices=STEER_POSITIONS, default=None, help=(
        "which positions are steered (docs/conventions.md); default: the hparams file's key (easyedit when it has "
        "none); without a file, evaluate decides by --dataset (after_prefix for the shipped datasets, easyedit "
        "otherwise) and generate steers every position (easyedit)")),
    "--completion-join": dict(choices=COMPLETION_JOINS, default=None, help=(
        "how completions follow the prompt (docs/conventions.md); default: the hparams file's key (as_stored when "
        "it has none); without a file, evaluate decides by --dataset (strip_leading_space for the shipped "
        "datasets, as_stored otherwise)")),
    "--fast-path-memory-mb": dict(type=number_arg(float, 0.0, MAX_MEMORY_MB, above=True), default=None, help=(
        "memory budget (MiB) of one capture or replay pass of the fast path; results do not depend on it "
        "(default: the hparams file's fast_path_memory_mb, else 2048)")),
    "--output-dir": dict(default=None, help=(
        "where the command writes. train: the interventions, <dir>/<dataset>/<alg>_<method>/layer_<L>.pt "
        "(default: the hparams file's steer_vector_output_dir, else the current directory); evaluate and demo: "
        "the report, results.json, results.csv, report.md and PNG plots (demo default: outputs/demo)")),
    "--easyedit-dir": dict(action="store_true", help=(
        "load directories without a manifest.json as EasyEdit's files even if they hold our metadata.json "
        "(EasyEdit's own directories need no flag); see docs/storage.md")),
    "--dataset": dict(default=None, help=(
        "shipped dataset name (sentiment, food) or a file in EasyEdit's formats (train default: sentiment)")),
    "--split": dict(default=None, help="split of a shipped dataset (default: %(default)s)"),
    "--concept-id": dict(type=number_arg(int, 0, MAX_COUNT), default=None, help=(
        "concept row of multi-concept files and data (default: the hparams file's concept_id, else 0)")),
    "--multipliers": dict(type=multipliers_arg, default=None, help=(
        "multipliers of the generations side by side: values and start:stop:step ranges, e.g. -2,0,2 or -4:4:2 "
        "(default: generate 0,1; demo -2,0,2)")),
    "--max-new-tokens": dict(type=number_arg(int, 1, 1 << 20), default=None, help="tokens generated per answer (default: %(default)s)"),
    "--no-chat-template": dict(action="store_true", help="prompt and score without the chat template"),
    "--no-manifold": dict(action="store_true", help="skip the activation-manifold probe"),
}
"""Every flag more than one command takes, declared here once (one help text; a command may set its default).
`evaluate`'s `--multipliers` is its own: a sweep written as several values (`--multipliers 4 -4 0,4`)."""


def add_shared_flags(target: ArgumentTarget, *flags: str, required: Sequence[str] = (), **defaults: Any) -> None:
    """Declare `flags` (keys of `SHARED_FLAGS`) on `target`, those in `required` as required; `defaults`
    (by dest, e.g. `split="test"`) replace the table's defaults. The help text is the table's, always."""
    for flag in flags:
        options = dict(SHARED_FLAGS[flag])
        dest = flag.lstrip("-").replace("-", "_")
        if dest in defaults:
            options["default"] = defaults[dest]
        if flag in required:
            options.pop("default", None)
            options["required"] = True
        target.add_argument(flag, **options)
        if flag == "--output-dir":  # the old spelling, kept hidden
            target.add_argument("--out", dest="output_dir", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
