#!/usr/bin/env python3
"""SPLIT experiment runner with the flags of EasyEdit's `examples/run_SPILT.py`, in one process.

    python examples/run_split.py --dataset sentiment --method all --model_name smollm2-135m-instruct \\
        --intervention_method vector --mode both --multipliers 1.0 2.0

Modes (EasyEdit's, plus `evaluate`):
  generate  train each (method, intervention) from hparams/<dataset>/<model_name>/<method>/generate_*.yaml
            -> vectors/<model_name>/<method>/<dataset>/<method>_<intervention>/layer_<L>.pt
  apply     load those files with apply_<method>.yaml at each multiplier and generate
            -> generation/<model_name>/<method>/<dataset>/<method>_<intervention>/m<m>/<dataset>_results.json
  both      generate, then apply
  loss      per-example NLLs of the matching and not-matching completions at +m and -m, with
            sft/generate_sft_loss.yaml, written as EasyEdit's loss mode writes them
            -> vectors/<model_name>/get_sft_loss/<method>/<dataset>/<method>_<intervention>/
               <intervention>_<method>_m<m>_{winning_only,losing_only}/train_losses.csv
               (+ per_example_nll.csv next to them: every example at every multiplier)
  evaluate  the preference-utility evaluator over every trained (method, intervention) on held-out
            pairs; report (json, csv, md, png plots) in results/<model_name>/<dataset>/preference_utility/

Differences from EasyEdit's script: everything runs in this process (no subprocess per step, one
model load); `--device` defaults to the hparams files' device instead of cuda:0; hparams are
looked up in this repository's `hparams/` tree and in EasyEdit's
`hparams/Steer/experiment_hparams/spilt_experiment/` under `--base_dir`; besides EasyEdit's
datasets (read from EasyEdit's `data/` files under `--base_dir`) any shipped dataset
(`sentiment`, `food`) or data file works. Multiplier 0 is the unsteered model here (EasyEdit's
loss mode treats factor 0 as "project the direction out").

Flags: the ones EasyEdit's `run_SPILT.py` and `steer/evaluate/evaluate.py` define keep EasyEdit's
spelling (`--model_name`, `--intervention_method`, `--base_dir`, `--dry_run`, `--model_name_or_path`,
`--eval_methods`, `--llm_model`); this script's additions are kebab-case (`--output-dir`, `--max-examples`).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

REPO_ROOT = Path(__file__).resolve().parent.parent

from easyedit_split import easyedit_layout as layout  # noqa: E402
from easyedit_split.cli.common import parse_set_option  # noqa: E402
from easyedit_split.storage.files import atomic_write_text  # noqa: E402
from easyedit_split.storage.units import load_interventions  # noqa: E402
from easyedit_split.constants import (  # noqa: E402
    DEFAULT_SWEEP, INTERVENTION_METHODS, METHOD_NAMES, SFT_PREFERENCE_TYPES, easyedit_alg_dir_name,
)
from easyedit_split.data import group_by_concept  # noqa: E402
from easyedit_split.errors import EasyEditSplitError, HparamsError  # noqa: E402
from easyedit_split.hparams import TopLevelConfig, load_hparams  # noqa: E402
from easyedit_split.registry import hparams_classes  # noqa: E402
from easyedit_split.evaluation import PreferenceUtilityEvaluator  # noqa: E402
from easyedit_split.integrations import pipeline  # noqa: E402
from easyedit_split.models import is_default_model_name  # noqa: E402
from easyedit_split.producing import train_to_dir  # noqa: E402
from easyedit_split.prompts import PromptFormat  # noqa: E402

logger = logging.getLogger("run_split")

MODES = ("generate", "apply", "both", "loss", "evaluate")


def _method(text: str) -> str:
    name = text.strip().lower()
    return "all" if name == "all" else easyedit_alg_dir_name(name)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Run SPLIT/CAA/SFT/RePS steering experiments (EasyEdit's run_SPILT.py flags), in-process.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 2)[1],
    )
    parser.add_argument("--dataset", required=True, help="axbench, psychopathy, powerseeking (EasyEdit's data files), "
                        "a shipped dataset (sentiment, food) or a data file")
    parser.add_argument("--method", required=True, type=_method, choices=[*(easyedit_alg_dir_name(m) for m in METHOD_NAMES), "all"],
                        help="caa, reps, sft, spilt (or split/SPLIT), or all")
    parser.add_argument("--model_name", required=True, help="model directory name in the hparams tree, e.g. smollm2-135m-instruct")
    parser.add_argument("--intervention_method", required=True, choices=[*INTERVENTION_METHODS, "all"])
    parser.add_argument("--mode", default="both", choices=MODES)
    parser.add_argument("--device", default=None, help="override the hparams files' device (EasyEdit's default is cuda:0)")
    parser.add_argument("--multipliers", nargs="+", type=float, default=None,
                        help=f"apply/loss: default 1.0; evaluate: default {' '.join(f'{m:g}' for m in DEFAULT_SWEEP)}")
    parser.add_argument("--base_dir", default=str(REPO_ROOT), help="root holding hparams/ (and EasyEdit's data/)")
    parser.add_argument("--dry_run", action="store_true", help="print what would run, load nothing")
    extra = parser.add_argument_group("additions to EasyEdit's flags")
    extra.add_argument("--output-dir", default=None, help="root for vectors/, generation/, results/ (default: --base_dir)")
    extra.add_argument("--model_name_or_path", default=None,
                       help="checkpoint directory (default: <base_dir>/models/<model_name>, or the offline default model)")
    extra.add_argument("--train-data", default=None, help="training pairs file (overrides the dataset's own)")
    extra.add_argument("--eval-data", default=None, help="held-out pairs file for --mode evaluate")
    extra.add_argument("--generation-data-file", default=None, help="generation prompts file for --mode apply")
    extra.add_argument("--generation-data-size", type=int, default=None, help="prompts used per apply run")
    extra.add_argument("--max-examples", type=int, default=None, help="pairs per concept for training/loss/evaluate")
    extra.add_argument("--max-new-tokens", type=int, default=None)
    extra.add_argument("--set", dest="overrides", action="append", type=parse_set_option, default=[], metavar="KEY=VALUE",
                       help="override a method-file key in every run (YAML value), like hydra's +key=value")
    extra.add_argument("--nll-mode", default="sequence", choices=("sequence", "token"), help="evaluate: NLL per sequence or per token")
    extra.add_argument("--no-manifold", action="store_true", help="evaluate: skip the activation-manifold probe")
    extra.add_argument("--quiet", action="store_true")
    judge = parser.add_argument_group("evaluate: generation-side scores (EasyEdit's steer/evaluate/evaluate.py flags)")
    judge.add_argument("--eval_methods", nargs="+", default=None, metavar="METHOD",
                       help="llm (judge ratings), ppl (perplexity under the unsteered model), distinctness: score "
                            "steered generations of the test prompts too")
    judge.add_argument("--llm_model", default=None, help="judge model behind an OpenAI-compatible API (openai:MODEL; "
                       "BASE_URL / API_KEY from the environment, as EasyEdit reads them)")
    judge.add_argument("--judge", default=None, help="openai:MODEL or local:MODEL_OR_PATH (instead of --llm_model)")
    judge.add_argument("--concept", default=None, help="concept description for the judge (default: the data's concept column; a shipped "
                       "dataset's concept is its name, as in easyedit-split evaluate --generate)")
    judge.add_argument("--generation-multipliers", nargs="+", type=float, default=None,
                       help="sweep of the generations (default: --multipliers or -4 -2 0 2 4)")
    return parser


# ============================================================================ the runner


class Runner:
    def __init__(self, args: argparse.Namespace, model: Any = None, tokenizer: Any = None) -> None:
        self.args = args
        self.base_dir = Path(args.base_dir)
        self.output_root = Path(args.output_dir) if args.output_dir else self.base_dir
        self.pool = pipeline.ModelPool(model, tokenizer)
        self.overrides = dict(args.overrides)
        known = set().union(*(cls.__dataclass_fields__ for cls in hparams_classes()))
        for key in self.overrides:
            if key not in known:
                raise HparamsError(f"--set {key}: no method file has this key")
        self.skipped: list[str] = []  # runs that did none of their work, with where they looked
        self.model_path = self._model_path()
        self.generation = self._generation_config()

    # ------------------------------------------------------------------ settings
    def _model_path(self) -> Optional[str]:
        args = self.args
        if args.model_name_or_path or self.pool.model is not None:
            return args.model_name_or_path
        if is_default_model_name(args.model_name):
            return args.model_name
        local = self.base_dir / "models" / args.model_name
        if local.is_dir():
            return str(local)
        if args.dry_run:
            return str(local)
        raise EasyEditSplitError(
            f"model '{args.model_name}': no checkpoint at {local} (where EasyEdit's run_SPILT.py looks). "
            "Put it there, pass --model_name_or_path DIR or a Hub id (e.g. google/gemma-2-9b-it), "
            "or use --model_name smollm2-135m-instruct (offline default)."
        )

    def _generation_config(self) -> dict:
        """Generation settings of the top-level `hparams/config.yaml` (EasyEdit's vectors_apply defaults)."""
        path = self.base_dir / "hparams" / "config.yaml"
        settings = {"generation_params": {"max_new_tokens": 40, "do_sample": False}, "num_responses": 1,
                    "generate_orig_output": True}
        if path.is_file():
            top = TopLevelConfig.from_hparams(path)
            settings.update(generation_params=dict(top.generation_params), num_responses=top.num_responses)
            if top.explicit_keys is None or "generate_orig_output" in top.explicit_keys:
                settings["generate_orig_output"] = top.generate_orig_output
        if self.args.max_new_tokens:
            settings["generation_params"]["max_new_tokens"] = self.args.max_new_tokens
        return settings

    def _common(self) -> dict:
        common = dict(self.overrides)
        if self.model_path:
            common["model_name_or_path"] = self.model_path
        if self.args.device:
            common["device"] = self.args.device
        return common

    def vectors_root(self, method: str) -> Path:
        return self.output_root / "vectors" / self.args.model_name / easyedit_alg_dir_name(method)

    def vectors_dir(self, method: str, intervention: str) -> Path:
        return layout.experiment_vectors_dir(self.output_root, self.args.model_name, method, self.args.dataset, intervention)

    def _pairs(self, split: str) -> list:
        args = self.args
        data_file = args.train_data if split == "train" else args.eval_data
        try:
            return pipeline.load_pairs(args.dataset, self.base_dir, split, data_file, limit=args.max_examples)
        except EasyEditSplitError:
            if split == "train" or args.eval_data:
                raise
            logger.warning("dataset '%s' has no test split; evaluating on its training pairs (in-sample)", args.dataset)
            return pipeline.load_pairs(args.dataset, self.base_dir, "train", args.train_data, limit=args.max_examples)

    # ------------------------------------------------------------------ modes
    def _skip(self, what: str, where: bool = True) -> bool:
        """Log and remember a run that could do none of its work (`main` then exits 1); returns False."""
        if where:
            what += f" under {', '.join(str(r) for r in layout.hparams_roots(self.base_dir))}"
        logger.warning("[SKIP] %s", what)
        self.skipped.append(what)
        return False

    def generate(self, method: str, intervention: str) -> bool:
        args = self.args
        path = layout.find_train_hparams(self.base_dir, args.dataset, args.model_name, method, intervention)
        if path is None:
            return self._skip(f"generate {method} {intervention}: no generate hparams for {args.dataset}/"
                              f"{args.model_name}/{method} ({intervention})")
        logger.info("[GENERATE] %s %s from %s", method, intervention, path)
        if args.dry_run:
            return True
        hparams = load_hparams(path, kind="train")
        hparams = pipeline.with_overrides(hparams, {**self._common(), "steer_vector_output_dir": str(self.vectors_root(method))})
        model, tokenizer = self.pool.get(hparams)
        pairs = self._pairs("train")
        directory, _ = train_to_dir(hparams, pairs, model, tokenizer, hparams.steer_vector_output_dir, args.dataset)
        logger.info("[SUCCESS] %s %s: %d pairs -> %s", method, intervention, len(pairs), directory)
        return True

    def apply(self, method: str, intervention: str, multipliers: Sequence[float]) -> bool:
        args = self.args
        path = layout.find_apply_hparams(self.base_dir, args.dataset, args.model_name, method)
        if path is None:
            return self._skip(f"apply {method} {intervention}: no apply hparams for {args.dataset}/{args.model_name}/{method}")
        load_dir = self.vectors_dir(method, intervention)
        logger.info("[APPLY] %s %s from %s, vectors %s, multipliers %s", method, intervention, path, load_dir, list(multipliers))
        if args.dry_run:
            return True
        base = load_hparams(path, kind="apply")
        examples = pipeline.load_prompts(args.dataset, self.base_dir, args.generation_data_file, args.generation_data_size)
        for multiplier in multipliers:
            hparams = pipeline.with_overrides(base, {
                **self._common(), "multipliers": [float(multiplier)], "steer_vector_load_dir": str(load_dir),
                "intervention_method": "vector" if easyedit_alg_dir_name(method) == "caa" else intervention,
            })
            model, tokenizer = self.pool.get(hparams)
            updates = pipeline.load_apply_updates(model, hparams)
            results = pipeline.generate_results(
                model, tokenizer, PromptFormat.from_hparams(hparams), examples, [updates],
                self.generation["generation_params"], self.generation["num_responses"],
                self.generation["generate_orig_output"], seed=hparams.seed,
            )
            out_dir = layout.experiment_generation_dir(self.output_root, args.model_name, method, args.dataset, intervention,
                                                        multiplier)
            written = pipeline.write_generation_results(results, out_dir, Path(str(args.dataset)).stem)
            logger.info("[SUCCESS] m=%s: %d generations -> %s", multiplier, len(results), written)
        return True

    def loss(self, method: str, intervention: str, multipliers: Sequence[float]) -> bool:
        args = self.args
        path = layout.find_loss_hparams(self.base_dir, args.dataset, args.model_name)
        if path is None:
            return self._skip(f"loss {method} {intervention}: no sft/generate_sft_loss.yaml for "
                              f"{args.dataset}/{args.model_name}")
        init_dir = self.vectors_dir(method, intervention)
        logger.info("[LOSS] %s %s from %s, multipliers %s", method, intervention, init_dir, list(multipliers))
        if args.dry_run:
            return True
        hparams = pipeline.with_overrides(load_hparams(path, kind="train"), {
            **self._common(), "intervention_method": intervention, "init_vector_path": str(init_dir), "inference": True,
        })
        model, tokenizer = self.pool.get(hparams)
        pairs = self._pairs("train")
        groups = group_by_concept(pairs)
        for concept_id, group in groups.items():
            updates = load_interventions(init_dir, layers=list(hparams.layers), concept_id=concept_id, model=model)
            rows = pipeline.score_loss_rows(model, tokenizer, hparams, group, updates, multipliers)
            for multiplier in multipliers:
                for preference_type in SFT_PREFERENCE_TYPES:
                    out = layout.loss_output_dir(self.output_root, args.model_name, method, args.dataset, intervention,
                                                   multiplier, preference_type)
                    if len(groups) > 1:
                        out = out.parent / f"concept_{concept_id}" / out.name
                    atomic_write_text(out / layout.LOSS_CSV_NAME,
                                               pipeline.loss_csv_text(rows, hparams, multiplier, preference_type))
            tidy = layout.loss_output_dir(self.output_root, args.model_name, method, args.dataset, intervention, 0, "x").parent
            if len(groups) > 1:
                tidy = tidy / f"concept_{concept_id}"
            atomic_write_text(tidy / layout.PER_EXAMPLE_CSV_NAME, pipeline.per_example_csv_text(rows))
            logger.info("[SUCCESS] loss for %d pairs (concept %d) -> %s", len(group), concept_id, tidy)
        return True

    def evaluate(self, runs: Sequence[tuple[str, str]], multipliers: Optional[Sequence[float]]) -> bool:
        args = self.args
        methods = {}
        prompt_hparams = None
        for method, intervention in runs:
            directory = self.vectors_dir(method, intervention)
            if not directory.is_dir():
                self._skip(f"evaluate {method} {intervention}: nothing trained at {directory} (run --mode generate first)",
                           where=False)
                continue
            methods[f"{method}_{intervention}" if method != "caa" else "caa"] = directory
            path = layout.find_train_hparams(self.base_dir, args.dataset, args.model_name, method, intervention)
            if prompt_hparams is None and path is not None:
                prompt_hparams = pipeline.with_overrides(load_hparams(path, kind="train"), self._common())
        report_dir = self.output_root / "results" / args.model_name / Path(str(args.dataset)).stem / "preference_utility"
        logger.info("[EVALUATE] %s -> %s", sorted(methods), report_dir)
        if args.dry_run or not methods:
            return True
        pairs = self._pairs("test")
        if args.eval_methods or args.judge or args.llm_model:
            self._check_generation_requirements(pairs)  # before the sweep, not after it
        model, tokenizer = self.pool.get(prompt_hparams)
        evaluator = PreferenceUtilityEvaluator(
            model, tokenizer, prompt_format=PromptFormat.from_hparams(prompt_hparams),
            multipliers=list(multipliers) if multipliers else list(DEFAULT_SWEEP),
            nll_mode=args.nll_mode, manifold=not args.no_manifold, progress=not args.quiet,
        )
        report = evaluator.compare(methods, pairs, out_dir=report_dir, dataset=str(args.dataset))
        if args.eval_methods or args.judge or args.llm_model:  # generation-side scores join the same report
            report.generation = self.generation_scores(methods, pairs, model, tokenizer, prompt_hparams, report_dir)
            report.write(report_dir)
        for result in report.results if hasattr(report, "results") else []:
            logger.info("%s: %s", result.name, {k: v for k, v in result.fits.to_dict().get("summaries", {}).items()})
        logger.info("[SUCCESS] report for %d pairs -> %s", len(pairs), report_dir)
        return True


    def _judge_spec(self) -> tuple[set, Optional[str]]:
        """The generation scores asked for (`--eval_methods`) and the judge spec, checked."""
        args = self.args
        wanted = {m.lower() for m in (args.eval_methods or ["llm", "ppl", "distinctness"])}
        unknown = wanted - {"llm", "ppl", "distinctness"}
        if unknown:
            raise HparamsError(f"--eval_methods: {sorted(unknown)} not supported here; use llm, ppl, distinctness")
        judge = args.judge or (f"openai:{args.llm_model}" if args.llm_model else None)
        if "llm" in wanted and judge is None:
            raise HparamsError("--eval_methods llm needs a judge: --llm_model MODEL (OpenAI-compatible) or --judge SPEC")
        return wanted, judge if "llm" in wanted else None

    def _check_generation_requirements(self, pairs: Sequence[Any]) -> None:
        """The judge (an HTTP judge's key or local base URL) and its concept description, before any model call."""
        from easyedit_split.judging import make_judge

        _, judge = self._judge_spec()
        if judge is None:
            return
        if judge.startswith("openai:"):
            make_judge(judge)  # no API key: JudgeConfigError names the variables now
        if self.args.concept is None and any(getattr(p, "concept", None) is None for p in pairs):
            raise HparamsError(f"the judge's concept rubric needs a concept description and {self.args.dataset} has no "
                               f"concept column: pass --concept 'a description' (e.g. --concept 'positive sentiment')")

    def generation_scores(self, methods: dict, pairs: Sequence[Any], model: Any, tokenizer: Any, prompt_hparams: Any,
                          report_dir: Path) -> Any:
        """Steered generations of the test prompts, scored as `--eval_methods` asks (resumable under report_dir/generation)."""
        from easyedit_split.generation_eval.evaluator import GenerationEvaluator, settings_from_easyedit

        args = self.args
        wanted, judge = self._judge_spec()
        settings = settings_from_easyedit(self.generation["generation_params"], self.generation["num_responses"],
                                          seed=getattr(prompt_hparams, "seed", 0))
        evaluator = GenerationEvaluator(
            model, tokenizer, prompt_format=PromptFormat.from_hparams(prompt_hparams), settings=settings,
            multipliers=args.generation_multipliers or args.multipliers or [-4.0, -2.0, 0.0, 2.0, 4.0],
            judge=judge, concept=args.concept,
            perplexity="ppl" in wanted, progress=not args.quiet,
        )
        limited = pairs[: args.generation_data_size] if args.generation_data_size else pairs
        return evaluator.compare(methods, limited, out_dir=report_dir / "generation", dataset=str(args.dataset))


def main(argv: Optional[Sequence[str]] = None, model: Any = None, tokenizer: Any = None) -> int:
    """Entry point; `model`/`tokenizer` replace loading from `model_name_or_path` (tests, notebooks)."""
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    logger.setLevel(logging.WARNING if args.quiet else logging.INFO)
    runs = pipeline.expand_runs(args.method, args.intervention_method)
    if not runs:
        logger.warning("no valid (method, intervention_method) pairs to run")
        return 1
    try:
        runner = Runner(args, model, tokenizer)
        ok = True
        if args.mode in ("generate", "both"):
            for method, intervention in runs:
                ok = runner.generate(method, intervention) and ok
        if args.mode in ("apply", "both"):
            for method, intervention in runs:
                ok = runner.apply(method, intervention, args.multipliers or [1.0]) and ok
        if args.mode == "loss":
            for method, intervention in runs:
                ok = runner.loss(method, intervention, args.multipliers or [1.0]) and ok
        if args.mode == "evaluate":
            ok = runner.evaluate(runs, args.multipliers) and ok
    except EasyEditSplitError as error:
        logger.error("[ERROR] %s", error)
        return 1
    if runner.skipped:  # nothing done is not a success: say what was not done and where it was looked for
        logger.error("[ERROR] %d run(s) did none of the work asked (--base_dir %s):\n  %s", len(runner.skipped),
                     runner.base_dir, "\n  ".join(runner.skipped))
        return 1
    logger.info("[SUCCESS] all runs completed" if ok else "[WARNING] some runs failed; see the messages above")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
