"""`easyedit-split evaluate`: preference-utility evaluation of saved interventions over a multiplier sweep.

    easyedit-split evaluate --vectors caa=out/sentiment/caa_vector split=out/sentiment/spilt_lora \\
        --dataset sentiment --multipliers=-8:8:2 --out report/
    easyedit-split evaluate out/sentiment/caa_vector --dataset data/test.jsonl --multipliers -4 0 4
    easyedit-split evaluate --hparams hparams/apply_caa.yaml --dataset sentiment --out report/

Writes results.json, results.csv, report.md and PNG plots to --out, and prints the markdown table.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, Optional

logger = logging.getLogger(__name__)


def parse_multipliers(values: list[str]) -> list[float]:
    """`-4 0 4`, `-4,0,4` or `start:stop:step` (stop included when the steps land on it)."""
    out: list[float] = []
    for value in values:
        for part in str(value).split(","):
            part = part.strip()
            if not part:
                continue
            if ":" in part:
                pieces = part.split(":")
                if len(pieces) != 3:
                    raise ValueError(f"--multipliers: '{part}' is not start:stop:step")
                start, stop, step = (float(p) for p in pieces)
                if step == 0 or (stop - start) * step < 0:
                    raise ValueError(f"--multipliers: step {step:g} never gets from {start:g} to {stop:g}")
                count = int(round((stop - start) / step + 1e-9)) + 1
                out += [round(start + i * step, 10) for i in range(count) if (start + i * step - stop) * step <= 1e-9]
            else:
                try:
                    out.append(float(part))
                except ValueError:
                    raise ValueError(f"--multipliers: '{part}' is not a number or start:stop:step") from None
    if not out:
        raise ValueError("--multipliers: no values")
    return sorted(set(out))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dirs", nargs="*", help="saved intervention directories (layer_<L>.pt); named after the directory")
    parser.add_argument("--vectors", nargs="+", default=[], metavar="NAME=DIR", help="named intervention directories")
    parser.add_argument("--hparams", default=None,
                        help="an apply hparams file (steer_vector_load_dir, layers, concept_id) or a top-level config "
                             "(apply_steer_hparam_paths + steer_vector_load_dir); also sets model and chat template")
    parser.add_argument("--dataset", required=True, help="shipped dataset name (sentiment, food) or a file in EasyEdit's formats")
    parser.add_argument("--split", default="test", help="split of a shipped dataset (default: test)")
    parser.add_argument("--multipliers", nargs="+", default=["-8:8:2"], help="values or start:stop:step, e.g. --multipliers=-8:8:2 (write '=' before a value that starts with '-' and holds ':'); default -8:8:2")
    parser.add_argument("--out", default=None, help="report directory (results.json, results.csv, report.md, PNGs)")
    parser.add_argument("--model", default=None, help="model name or path (default: the hparams' or smollm2-135m-instruct)")
    parser.add_argument("--dtype", default=None, help="weight dtype (default: hparams' or float32)")
    parser.add_argument("--device", default=None, help="cpu, cuda, auto (default: hparams' or cpu)")
    parser.add_argument("--nll-mode", choices=("sequence", "token"), default="sequence",
                        help="sequence: sum of completion-token NLLs (default); token: per-token mean (EasyEdit's loss mode)")
    parser.add_argument("--concept-id", type=int, default=None, help="concept row of multi-concept files and data (default 0)")
    parser.add_argument("--max-examples", type=int, default=None, help="score only the first N pairs")
    parser.add_argument("--batch-size", type=int, default=64, help="most rows per replayed forward (default 64)")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples (default 1000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-chat-template", action="store_true", help="score without the chat template")
    parser.add_argument("--system-prompt", default=None, help="system prompt of the chat template")
    parser.add_argument("--no-manifold", action="store_true", help="skip the activation-manifold probe")
    parser.add_argument("--no-plots", action="store_true", help="write no PNG plots")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _resolve(path: str, base: Optional[Path]) -> str:
    candidate = Path(path)
    if candidate.exists() or base is None or candidate.is_absolute():
        return str(candidate)
    return str(base / candidate) if (base / candidate).exists() else str(candidate)


def _from_hparams(path: str) -> tuple[dict[str, tuple[str, list[int]]], Any, int]:
    """{name: (dir, layers)}, the first method file (model/template keys), concept id."""
    from .hparams import TopLevelConfig, load_hparams
    import yaml

    base = Path(path).resolve().parent
    with open(path, encoding="utf-8") as handle:
        raw = yaml.safe_load(handle) or {}
    methods: dict[str, tuple[str, list[int]]] = {}
    if isinstance(raw, dict) and "apply_steer_hparam_paths" in raw:
        config = TopLevelConfig.from_hparams(path)
        files = list(config.apply_steer_hparam_paths)
        dirs = list(config.steer_vector_load_dir)
        first = None
        for i, file in enumerate(files):
            hp = load_hparams(_resolve(file, base), kind="apply")
            first = first or hp
            directory = dirs[i] if i < len(dirs) else hp.steer_vector_load_dir
            if not directory:
                raise ValueError(f"{path}: no steer_vector_load_dir for apply file {file}")
            methods[f"{hp.alg_name}" if hp.alg_name not in methods else f"{hp.alg_name}_{i}"] = (_resolve(directory, base), list(hp.layers))
        if first is None:
            raise ValueError(f"{path}: apply_steer_hparam_paths is empty")
        return methods, first, first.concept_id
    hp = load_hparams(path, kind="apply")
    if not hp.steer_vector_load_dir:
        raise ValueError(f"{path}: key 'steer_vector_load_dir' is missing; set it to the directory holding layer_<L>.pt")
    methods[hp.alg_name] = (_resolve(hp.steer_vector_load_dir, base), list(hp.layers))
    return methods, hp, hp.concept_id


def run(args: argparse.Namespace) -> int:
    from .data import load_dataset
    from .evaluation import PreferenceUtilityEvaluator
    from .evaluation.manifold import ManifoldOptions
    from .models import load_model_and_tokenizer
    from .prompts import PromptFormat
    from .storage import load_interventions

    try:
        multipliers = parse_multipliers(args.multipliers)
        sources: dict[str, tuple[str, Optional[list[int]]]] = {}
        hparams = None
        concept_id = 0
        if args.hparams:
            found, hparams, concept_id = _from_hparams(args.hparams)
            sources.update(found)
        for spec in args.vectors:
            if "=" not in spec:
                raise ValueError(f"--vectors: '{spec}' is not NAME=DIR")
            name, directory = spec.split("=", 1)
            sources[name] = (directory, None)
        for directory in args.dirs:
            name = Path(directory).name or directory
            sources[name if name not in sources else directory] = (directory, None)
        if not sources:
            raise ValueError("nothing to evaluate: give intervention directories, --vectors NAME=DIR or --hparams FILE")
        if args.concept_id is not None:
            concept_id = args.concept_id
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    model_name = args.model or getattr(hparams, "model_name_or_path", None) or "smollm2-135m-instruct"
    dtype = args.dtype or getattr(hparams, "dtype", None) or "float32"
    device = args.device or getattr(hparams, "device", None) or "cpu"
    model, tokenizer = load_model_and_tokenizer(model_name, dtype=dtype, device=device)
    use_template = not args.no_chat_template
    if hparams is not None and use_template:
        use_template = bool(hparams.use_chat_template)  # an hparams file decides, as in EasyEdit
    system_prompt = args.system_prompt if args.system_prompt is not None else (getattr(hparams, "system_prompt", "") or "")
    fmt = PromptFormat(use_chat_template=use_template, system_prompt=system_prompt)

    pairs = load_dataset(args.dataset, args.split)
    if len({p.concept_id for p in pairs}) > 1:
        pairs = [p for p in pairs if p.concept_id == concept_id]
        if not pairs:
            print(f"error: {args.dataset}: no pairs with concept_id {concept_id}", file=sys.stderr)
            return 2
    if args.max_examples:
        pairs = pairs[: args.max_examples]

    updates = {name: load_interventions(directory, layers=layers, concept_id=concept_id, model=model)
               for name, (directory, layers) in sources.items()}
    evaluator = PreferenceUtilityEvaluator(
        model, tokenizer, prompt_format=fmt, multipliers=multipliers, nll_mode=args.nll_mode,
        batch_size=args.batch_size, n_bootstrap=args.bootstrap, seed=args.seed,
        manifold=False if args.no_manifold else ManifoldOptions(seed=args.seed), progress=not args.no_progress,
    )
    report = evaluator.compare(updates, pairs, out_dir=None, dataset=str(args.dataset), concept_id=concept_id)
    for result, (_, (directory, _)) in zip(report.results, sources.items()):
        result.info["source"] = str(directory)
    if args.out:
        paths = report.write(args.out, plots=not args.no_plots)
        print(f"wrote {', '.join(str(p) for p in paths.values())}", file=sys.stderr)
    print(report.markdown_table())
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="easyedit-split evaluate", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
