"""Register SPLIT and the preference-utility evaluator in an EasyEdit checkout.

    from easyedit_split.integrations.easyedit import register_with_easyedit
    report = register_with_easyedit()          # EasyEdit's `steer` importable, or EASYEDIT_ROOT set
    # now EasyEdit's BaseVectorGenerator / BaseVectorApplier run alg_name: split with this package;
    # EasyEdit's own `spilt` stays EasyEdit's unless you pass alg_names=("split", "spilt")

What is added:
- `steer.utils.alg_dict.HYPERPARAMS_CLASS_DICT['split'] = {'train': SplitHyperParams,
  'apply': ApplySplitHyperParams (subclass that accepts EasyEdit's construction)}` (dataclasses,
  as EasyEdit's `load_*_vector_hparams` build them from the fields they share with the YAML and
  the top-level config).
- `steer.utils.alg_dict.METHODS_CLASS_DICT['split'] = {'train': generate_split, 'apply':
  apply_split}` with EasyEdit's call signatures: `train(hparams, dataset, model=None,
  dataset_name=None)` (as `BaseVectorGenerator.generate_vectors` calls it; `dataset` is EasyEdit's
  formatted `List[dict]` or multi-concept `List[(concept_id, List[dict])]`) returning
  `{"layer_<L>": payload}`, and `apply(hparams, pipline=None, vector=None)` returning the model
  wrapper (as `BaseVectorApplier.apply_steering` calls it).
- The evaluator, next to EasyEdit's: `steer.evaluate.EVALUATORS['preference_utility']` and
  `steer.evaluate.PreferenceUtilityEvaluator`; EasyEdit's `Evaluator.evaluate` (its dispatch over
  `eval_methods`) learns the method name `preference_utility` (see `_patch_evaluator`).

Inside EasyEdit's model wrapper the updates occupy EasyEdit's own per-layer intervention slot
(`EasyEditUpdate`), so EasyEdit's `ori_generate` is unsteered and its `reset_all()` removes them.

With EasyEdit's plugin mails (`contrib/easyedit/0003-*`, `0004-*`) nothing needs registering: this
package declares the entry points `easyedit.steer_methods` (`split` -> `steer_method`) and
`easyedit.steer_evaluators` (`preference_utility` -> `evaluate_plugin`), which EasyEdit reads when
a name is missing from its registry. EasyEdit's built-in `spilt` is never replaced unless the user
sets `EASYEDIT_STEER_PLUGINS_OVERRIDE=spilt:split`. `register_with_easyedit()` remains for
checkouts without those mails (it needs 0001).

EasyEdit's steer framework is not on PyPI; the checkout is found on `sys.path` or through
`EASYEDIT_ROOT`. Every failure is an `IntegrationError` that says what failed and what to do.
"""
from __future__ import annotations

import dataclasses
import importlib
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

from torch import nn

from ..constants import ALG_ALIASES, easyedit_alg_dir_name
from ..errors import IntegrationError

ALG_NAMES = ("split",)
"""The registry names `register_with_easyedit` fills by default: SPLIT's own name only, so EasyEdit's
built-in `spilt` stays EasyEdit's. Pass `alg_names=ALL_ALG_NAMES` to put the package behind `spilt` too."""
ALL_ALG_NAMES = ("split",) + tuple(alias for alias, name in ALG_ALIASES.items() if name == "split")
EVALUATOR_NAME = "preference_utility"
HANDLE_ATTRIBUTE = "_easyedit_split_handles"
INSTALL_HINT = (
    "EasyEdit's steer framework is not on PyPI: clone it (git clone https://github.com/zjunlp/EasyEdit) and put the "
    "checkout on PYTHONPATH, or set EASYEDIT_ROOT=/path/to/EasyEdit (or pass easyedit_root=)."
)


@dataclass
class RegistrationReport:
    """What `register_with_easyedit` changed, and what it noticed about the checkout."""

    steer_path: str
    methods: list[str] = field(default_factory=list)
    evaluator: Optional[str] = None
    warnings: list[str] = field(default_factory=list)


# ============================================================================ finding EasyEdit


def _put_on_path(easyedit_root: Optional[Union[str, Path]]) -> Optional[Path]:
    root = easyedit_root or os.environ.get("EASYEDIT_ROOT")
    if not root:
        return None
    root = Path(root).expanduser().resolve()
    if not (root / "steer" / "__init__.py").is_file():
        raise IntegrationError(f"EASYEDIT_ROOT={root}: no steer/__init__.py there; point it at the EasyEdit checkout's root")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return root


def _import(name: str) -> Any:
    return importlib.import_module(name)


def _empty_init_problems(steer_dir: Path) -> list[str]:
    """EasyEdit 14cea82: alg_dict imports names from package __init__s that export nothing."""
    problems = []
    alg_dict = steer_dir / "utils" / "alg_dict.py"
    if not alg_dict.is_file():
        return [f"{alg_dict} is missing"]
    text = alg_dict.read_text(encoding="utf-8")
    for package in ("vector_generators", "vector_appliers"):
        wanted = re.findall(rf"from \.\.{package} import\s*\(([^)]*)\)", text)
        names = sorted({n.strip() for block in wanted for n in block.split(",") if n.strip()})
        init = steer_dir / package / "__init__.py"
        exported = init.read_text(encoding="utf-8") if init.is_file() else ""
        absent = [n for n in names if not re.search(rf"\b{re.escape(n)}\b", exported)]
        if absent:
            problems.append(
                f"steer/utils/alg_dict.py imports {len(names)} names from steer/{package}/__init__.py, which does not "
                f"export {', '.join(absent[:4])}{' ...' if len(absent) > 4 else ''}"
            )
    return problems


def series_hint(mail: str) -> str:
    """Where the EasyEdit mail `mail` (e.g. '0001') is and how to apply it."""
    contrib = Path(__file__).resolve().parents[2] / "contrib" / "easyedit"
    found = sorted(contrib.glob(f"{mail}-*.patch")) if contrib.is_dir() else []
    where = str(found[0]) if found else f"contrib/easyedit/{mail}-*.patch in the easyedit_split source repository"
    return f"git am --keep-cr {where} (run in the EasyEdit checkout; see contrib/easyedit/README.md)"


def import_alg_dict(easyedit_root: Optional[Union[str, Path]] = None) -> Any:
    """EasyEdit's `steer.utils.alg_dict`, or an `IntegrationError` saying exactly what failed."""
    _put_on_path(easyedit_root)
    try:
        steer = _import("steer")
    except ImportError as error:
        raise IntegrationError(f"cannot import EasyEdit's 'steer' package ({error}). {INSTALL_HINT}") from error
    steer_dir = Path(steer.__file__).resolve().parent
    try:
        return _import("steer.utils.alg_dict")
    except Exception as error:  # ImportError, or an error raised inside EasyEdit's imports
        problems = _empty_init_problems(steer_dir)
        detail = (" Cause: " + "; ".join(problems) + ". This is EasyEdit's registry import regression (14cea82): "
                  f"apply the fix, {series_hint('0001')}, and retry.") if problems else (
                  " Install EasyEdit's requirements (pip install -r requirements.txt in the checkout) and retry.")
        raise IntegrationError(
            f"EasyEdit found at {steer_dir}, but importing steer.utils.alg_dict failed: "
            f"{type(error).__name__}: {error}.{detail}"
        ) from error


def check_prefix_helper(tokenizer: Any) -> Optional[str]:
    """EasyEdit's chat-template prefix helper against ours; a message when they disagree (None when fine).

    With transformers 5.x, `apply_chat_template(..., tokenize=True)` returns a `BatchEncoding`, and
    EasyEdit's `get_prefix_length` (steer/vector_generators/{spilt,sft,reps}/utils.py) then
    compares dictionary keys and returns 0: its trainers steer the whole chat-template prefix.
    """
    try:
        helper = _import("steer.vector_generators.spilt.utils").get_prefix_length
    except Exception as error:
        return f"EasyEdit's get_prefix_length could not be imported ({type(error).__name__}: {error})"
    from ..prompts import PromptFormat
    from ..prompts import steering_prefix_length

    theirs = int(helper(tokenizer))
    ours = int(steering_prefix_length(tokenizer, PromptFormat(), exclude_bos=True))
    if theirs == ours:
        return None
    import transformers

    return (f"EasyEdit's get_prefix_length returns {theirs} for this tokenizer, the chat template's common prefix is "
            f"{ours} tokens (transformers {transformers.__version__}: apply_chat_template(tokenize=True) returns "
            f"{type(tokenizer.apply_chat_template([{'role': 'user', 'content': '1'}], tokenize=True)).__name__}); "
            "EasyEdit's own spilt/sft/reps trainers steer that prefix too. The methods registered here use their own.")


# ============================================================================ adapters with EasyEdit's signatures


def _easyedit_apply_class() -> type:
    """`ApplySplitHyperParams` as EasyEdit's `load_apply_vector_hparams` builds it.

    EasyEdit passes the top-level config's keys to the constructor too, so `steer_vector_load_dir`
    first arrives as the top-level *list* (EasyEdit sets the file's own entry right after); the
    list is reduced to its first entry instead of failing validation.
    """
    from ..hparams import ApplySplitHyperParams

    global _APPLY_CLASS
    if _APPLY_CLASS is None:
        @dataclass
        class EasyEditApplySplitHyperParams(ApplySplitHyperParams):
            def __post_init__(self) -> None:
                if isinstance(self.steer_vector_load_dir, (list, tuple)):
                    self.steer_vector_load_dir = self.steer_vector_load_dir[0] if self.steer_vector_load_dir else None
                super().__post_init__()

        _APPLY_CLASS = EasyEditApplySplitHyperParams
    return _APPLY_CLASS


_APPLY_CLASS: Optional[type] = None


def pairs_from_easyedit(dataset: Any, dataset_name: Optional[str] = None) -> list:
    """EasyEdit's formatted training data -> `PolarityPair`s (single `List[dict]` or `List[(concept_id, List[dict])]`)."""
    from ..data import PolarityPair

    def pair(record: Mapping[str, Any], concept_id: int, index: str) -> PolarityPair:
        missing = [k for k in ("question", "matching", "not_matching") if not record.get(k)]
        if missing:
            raise IntegrationError(f"{dataset_name or 'dataset'} item {index}: missing {missing} (EasyEdit's standard fields)")
        concept = record.get("output_concept", record.get("concept"))
        return PolarityPair(str(record["question"]), str(record["matching"]), str(record["not_matching"]),
                            concept_id=concept_id, concept=None if concept is None else str(concept))

    items = list(dataset)
    if items and isinstance(items[0], tuple):
        return [pair(r, int(cid), f"{cid}/{i}") for cid, records in items for i, r in enumerate(records)]
    return [pair(r, 0, str(i)) for i, r in enumerate(items)]


def _hf_model_and_tokenizer(model: Any, hparams: Any) -> tuple[nn.Module, Any]:
    """(Hugging Face model, tokenizer) from an EasyEdit model wrapper, a bare model, or by loading."""
    if model is None:
        from ..models import load_model_and_tokenizer

        return load_model_and_tokenizer(hparams.model_name_or_path, getattr(hparams, "dtype", "float32"),
                                        getattr(hparams, "device") or "cpu",
                                        override_weights_path=getattr(hparams, "override_model_weights_path", None))
    inner = getattr(model, "model", None)
    if isinstance(inner, nn.Module) and not isinstance(model, nn.Module):  # EasyEdit's BaseModelWrapper
        return inner, model.tokenizer
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise IntegrationError("generate_split: a bare model needs a tokenizer; pass EasyEdit's model wrapper")
    return model, tokenizer


def _plain(value: Any) -> Any:
    """OmegaConf containers (EasyEdit assigns top-level config values as they are) as plain lists/dicts."""
    if type(value).__name__ in ("ListConfig", "DictConfig"):
        from omegaconf import OmegaConf

        return OmegaConf.to_container(value, resolve=True)
    return value


def _our_hparams(hparams: Any, kind: str) -> Any:
    from ..hparams import HyperParams, keep_known_keys
    from ..registry import hparams_class

    if isinstance(hparams, HyperParams):
        # EasyEdit sets e.g. `steer_train_dataset = top_cfg.steer_train_dataset` (a ListConfig) after construction
        changes = {name: _plain(getattr(hparams, name)) for name in hparams.__dataclass_fields__
                   if _plain(getattr(hparams, name)) is not getattr(hparams, name)}
        return dataclasses.replace(hparams, **changes) if changes else hparams
    cls = hparams_class("split", kind)
    data = hparams.to_dict() if hasattr(hparams, "to_dict") else dict(vars(hparams))
    return cls(**{k: _plain(v) for k, v in keep_known_keys(cls, data).items()})


def _output_root(directory: Union[str, Path], dataset_name: Optional[str]) -> tuple[str, str]:
    """(root, dataset) such that `<root>/<dataset>` is `directory`: EasyEdit's generator has already
    appended the dataset name to `steer_vector_output_dir`, the package appends it itself."""
    text = str(directory).rstrip("/\\")
    if dataset_name and text.endswith(str(dataset_name)) and len(text) > len(str(dataset_name)):
        return text[: -len(str(dataset_name))], str(dataset_name)
    return str(Path(text).parent), Path(text).name


def generate_split(hparams: Any, dataset: Any, model: Any = None, dataset_name: Optional[str] = None) -> dict:
    """EasyEdit's train entry (`METHODS_CLASS_DICT[alg]['train']`): train SPLIT and save like EasyEdit.

    Runs `SteerEditor.train` (same seeding, same trainer, same files as the package's own path).
    Files go to `<hparams.steer_vector_output_dir>/spilt_<intervention_method>/layer_<L>.pt`
    (EasyEdit's generator has already appended the dataset name). Returns
    `{"layer_<L>": payload}`, or `{"layer_<L>": {concept_id: payload}}` for multi-concept data.
    """
    from ..editor import SteerEditor
    from ..storage.payloads import update_to_payload

    hp = _our_hparams(hparams, "train")
    pairs = pairs_from_easyedit(dataset, dataset_name)
    hf_model, tokenizer = _hf_model_and_tokenizer(model, hp)
    editor = SteerEditor(hp, model=hf_model, tokenizer=tokenizer)
    save = bool(getattr(hp, "save_vectors", True) and getattr(hp, "steer_vector_output_dir", None))
    if save:
        root, name = _output_root(hp.steer_vector_output_dir, dataset_name)
        trained = editor.train(pairs, save=True, output_dir=root, dataset_name=name)
    else:
        trained = editor.train(pairs, save=False, dataset_name=dataset_name)
    result = {}
    for layer in trained:
        if len(trained.concepts) > 1:
            result[f"layer_{layer}"] = {cid: update_to_payload(updates[layer], cid)
                                        for cid, updates in sorted(trained.concepts.items())}
        else:
            result[f"layer_{layer}"] = update_to_payload(trained[layer])
    return result


EASYEDIT_SLOT = easyedit_alg_dir_name("split")
"""The key of EasyEdit's per-layer `intervention_dict` the package's updates occupy. EasyEdit's
decoder-layer wrapper hands a LoRA/local-weight intervention its component input only under
the names 'reps', 'sft' and 'spilt', and its `reset('spilt')`, `reset_all()` and `ori_generate`
treat that slot like EasyEdit's own SPLIT."""


class EasyEditUpdate(nn.Module):
    """A package update placed in EasyEdit's intervention slot, so that EasyEdit manages it.

    EasyEdit's layer wrapper calls `forward(layer_output, **layer_kwargs)` (plus `args=` the
    component input for LoRA/local weight); the update adds `delta(x)` at the positions the apply
    file's `steer_positions` rule names for generation (`position_ids >= prefix_length`; 0 for
    EasyEdit's own files, which steer every position), every generated token included. No hooks are
    attached to the model, so EasyEdit's `ori_generate` (which empties the slots while it
    runs) is unsteered and `reset_all()` removes the update.
    """

    def __init__(self, update: Any, prefix_length: int) -> None:
        super().__init__()
        self.update = update
        self.prefix_length = int(prefix_length)
        self.intervention_method = update.method  # read by EasyEdit's wrapper
        self.intervention_components = update.component

    def forward(self, base: Any, **kwargs: Any) -> Any:
        import torch

        x = kwargs.get("args") if self.update.reads_input else None
        if self.update.reads_input and x is None:
            raise IntegrationError(
                f"{self.update.method} update at '{self.update.component}': EasyEdit's layer wrapper passed no component "
                "input (args=); this EasyEdit revision does not capture it for this component")
        delta = self.update.delta(x, torch.ones((), device=base.device), base.dtype)
        position_ids = kwargs.get("position_ids")
        if self.prefix_length and position_ids is not None:
            steered = (position_ids >= self.prefix_length).to(device=base.device)
            delta = delta * steered.to(delta.dtype).unsqueeze(-1)
        elif self.prefix_length and base.shape[1] > 1:  # no position ids: an unpadded prompt pass
            steered = torch.arange(base.shape[1], device=base.device) >= self.prefix_length
            delta = delta * steered.to(delta.dtype).view(1, -1, 1)
        return base + delta


def _easyedit_layers(pipline: Any) -> Optional[Sequence[Any]]:
    """EasyEdit's wrapped decoder layers (with `intervention_dict`), or None for a bare model."""
    layers = getattr(pipline, "_decoder_layers", None)
    if not callable(layers) or not callable(getattr(pipline, "set_intervention", None)):
        return None
    layers = list(layers())
    return layers if all(isinstance(getattr(layer, "intervention_dict", None), dict) for layer in layers) else None


def reset_split(pipline: Any) -> None:
    """Remove everything `apply_split` put on a model wrapper (EasyEdit's `reset_all()` does too)."""
    for handle in getattr(pipline, HANDLE_ATTRIBUTE, None) or []:
        handle.remove()
    try:
        setattr(pipline, HANDLE_ATTRIBUTE, [])
    except AttributeError:
        pass
    for layer in _easyedit_layers(pipline) or []:
        if isinstance(layer.intervention_dict.get(EASYEDIT_SLOT), EasyEditUpdate):
            del layer.intervention_dict[EASYEDIT_SLOT]


def _check_widths(update: Any, hf_model: nn.Module, layer: int) -> None:
    """The update's widths against the model's config (EasyEdit's wrapped layers hide the modules)."""
    from ..models import hidden_size, num_layers

    config = getattr(hf_model.config, "text_config", None) or hf_model.config
    if not 0 <= layer < num_layers(hf_model):
        raise IntegrationError(f"apply_split: layer {layer} is outside the model ({num_layers(hf_model)} layers)")
    if update.hidden_size != hidden_size(hf_model):
        raise IntegrationError(f"apply_split: layer {layer} update has output width {update.hidden_size}, "
                               f"the model's hidden size is {hidden_size(hf_model)}")
    if update.reads_input:
        expected = int(config.intermediate_size) if update.component == "mlp_mid" else hidden_size(hf_model)
        if update.input_size != expected:
            raise IntegrationError(f"apply_split: layer {layer} update reads '{update.component}' of width "
                                   f"{update.input_size}, the model's is {expected}")


def apply_split(hparams: Any, pipline: Any = None, vector: Any = None) -> Any:
    """EasyEdit's apply entry (`METHODS_CLASS_DICT[alg]['apply']`): put SPLIT updates on the model.

    Reads `layer_<L>.pt` from `hparams.steer_vector_load_dir` (or the `vector` dict a generate
    step returned), picks `concept_id`, scales by `multipliers`, and returns `pipline` (loaded
    with EasyEdit's `get_model` when None). On EasyEdit's model wrapper the updates go into its
    per-layer intervention slots (see `EasyEditUpdate`), so EasyEdit's unsteered generation and
    resets work; on a bare model they are attached with hooks. Applying again replaces them.
    """
    from ..apply import load_for_apply, per_layer_multipliers, scaled_updates
    from ..interventions import attach
    from ..prompts import PromptFormat, first_steered_position
    from ..storage.payloads import payload_to_update

    if pipline is None:
        try:
            get_model = _import("steer.models.get_model").get_model
        except Exception as error:
            raise IntegrationError(f"apply_split: no model given and EasyEdit's steer.models.get_model failed to import "
                                   f"({type(error).__name__}: {error})") from error
        pipline, _ = get_model(hparams)
    hf_model = pipline.model if isinstance(getattr(pipline, "model", None), nn.Module) and not isinstance(pipline, nn.Module) else pipline
    reset_split(pipline)
    layers = list(hparams.layers)
    concept_id = int(getattr(hparams, "concept_id", 0) or 0)
    if vector is not None:
        updates = {layer: payload_to_update(vector[f"layer_{layer}"], concept_id, source=f"vector['layer_{layer}']")
                   for layer in layers}
        updates = scaled_updates(updates, per_layer_multipliers(layers, list(hparams.multipliers)))
    easyedit_layers = _easyedit_layers(pipline)
    if vector is None:
        # EasyEdit's wrappers hide the modules the package's shape checks look up; widths are checked below
        updates = load_for_apply(hf_model if easyedit_layers is None else None, hparams)
    if easyedit_layers is None:
        handle = attach(hf_model, updates, 1.0)
        try:
            setattr(pipline, HANDLE_ATTRIBUTE, [handle])
        except AttributeError:
            pass
        return pipline
    tokenizer = getattr(pipline, "tokenizer", None)
    # the hparams' steer_positions rule (EasyEdit's files: every position, as EasyEdit's own appliers)
    prefix = first_steered_position(tokenizer, PromptFormat.from_hparams(hparams), "vector", "generation") if tokenizer is not None else 0
    device = next(hf_model.parameters()).device
    for layer, update in updates.items():
        _check_widths(update, hf_model, layer)
        pipline.set_intervention(layer, EasyEditUpdate(update, prefix).to(device).eval(), EASYEDIT_SLOT)
    return pipline


def steer_method() -> dict:
    """The `easyedit.steer_methods` entry point (EasyEdit with the plugin patch): SPLIT's registry entry."""
    from ..hparams import SplitHyperParams

    return {"hparams": {"train": SplitHyperParams, "apply": _easyedit_apply_class()},
            "methods": {"train": generate_split, "apply": apply_split}}


# ============================================================================ evaluator


def evaluate_preference_utility(options: Mapping[str, Any], dataset_name: str) -> dict:
    """EasyEdit-side evaluation: `Evaluator(eval_methods=['preference_utility'], model_name_or_path=...,
    steer_vector_load_dir=DIR, preference_data=FILE_OR_NAME, multipliers=[...])`; returns summary numbers."""
    from ..data import load_dataset
    from ..evaluation import PreferenceUtilityEvaluator
    from ..models import load_model_and_tokenizer
    from ..prompts import PromptFormat

    load_dir = options.get("steer_vector_load_dir")
    if not load_dir:
        raise IntegrationError("preference_utility: pass steer_vector_load_dir=<dir with layer_<L>.pt> to EasyEdit's Evaluator")
    model, tokenizer = load_model_and_tokenizer(options.get("model_name_or_path"), options.get("dtype", "float32"),
                                                options.get("device") or "cpu")
    pairs = load_dataset(options.get("preference_data") or dataset_name, split=options.get("split", "test"))
    evaluator_options = {k: options[k] for k in ("multipliers", "nll_mode", "batch_size") if k in options}
    evaluator = PreferenceUtilityEvaluator(
        model, tokenizer, prompt_format=PromptFormat(bool(options.get("use_chat_template", True)),
                                                     options.get("system_prompt", "") or ""),
        manifold=bool(options.get("manifold", False)), progress=False, **evaluator_options)
    result = evaluator.evaluate(load_dir, pairs, name=str(options.get("name", "split")),
                                concept_id=int(options.get("concept_id", 0)))
    metrics = result.metrics
    return {
        "preference_utility": {
            "multipliers": [float(m) for m in result.multipliers],
            "pref_odds": [float(v) for v in metrics.preference.mean],
            "util_odds": [float(v) for v in metrics.utility.mean],
            "preference_accuracy": [float(v) for v in metrics.preference_accuracy],
            "accuracy": [float(v) for v in metrics.preference_accuracy],  # old key, same values (docs/conventions.md)
            "fits": result.fits.to_dict(),
        }
    }


def evaluate_plugin(options: Mapping[str, Any], results: Any, dataset_name: str, concept: Optional[str] = None) -> dict:
    """The `easyedit.steer_evaluators` entry point (EasyEdit with the plugin patch): EasyEdit's
    `Evaluator(**options)` calls it for `eval_methods=['preference_utility']`. The generations in
    `results` are not needed: preference and utility are scored on `preference_data` pairs."""
    return evaluate_preference_utility(options, dataset_name)


def _patch_evaluator(evaluate_module: Any) -> bool:
    """Teach EasyEdit's `Evaluator` (if/elif dispatch over `eval_methods`) the name `preference_utility`."""
    evaluator_class = getattr(evaluate_module, "Evaluator", None)
    if evaluator_class is None or getattr(evaluator_class, "_easyedit_split_patched", False):
        return evaluator_class is not None
    original_init, original_evaluate = evaluator_class.__init__, evaluator_class.evaluate

    def __init__(self, **kwargs):  # noqa: N807 - keeps EasyEdit's keyword-only construction
        original_init(self, **kwargs)
        self._easyedit_split_options = dict(kwargs)

    def evaluate(self, results, dataset_name, concept=None):
        methods = list(self.eval_methods or [])
        ours = [m for m in methods if EVALUATOR_NAME in str(m).lower()]
        self.eval_methods = [m for m in methods if m not in ours]
        try:
            eval_results = original_evaluate(self, results, dataset_name, concept) if self.eval_methods else {}
        finally:
            self.eval_methods = methods
        if ours:
            eval_results.update(evaluate_preference_utility(getattr(self, "_easyedit_split_options", {}), dataset_name))
        return eval_results

    evaluator_class.__init__, evaluator_class.evaluate = __init__, evaluate
    evaluator_class._easyedit_split_patched = True
    return True


# ============================================================================ registration


def register_with_easyedit(
    easyedit_root: Optional[Union[str, Path]] = None,
    evaluator: bool = True,
    tokenizer: Any = None,
    alg_names: Sequence[str] = ALG_NAMES,
) -> RegistrationReport:
    """Add SPLIT (train and apply, under `alg_names`: `split` by default) and the evaluator to EasyEdit.

    EasyEdit's own `spilt` is replaced only when `alg_names` names it (an explicit opt-in).

    `easyedit_root` (or `EASYEDIT_ROOT`) puts the checkout on `sys.path`. With `tokenizer`, EasyEdit's
    chat-template prefix helper is checked against ours (see `check_prefix_helper`). Raises
    `IntegrationError` when EasyEdit cannot be imported, naming what failed.
    """
    from ..hparams import SplitHyperParams

    alg_dict = import_alg_dict(easyedit_root)
    for name in ("HYPERPARAMS_CLASS_DICT", "METHODS_CLASS_DICT"):
        if not isinstance(getattr(alg_dict, name, None), dict):
            raise IntegrationError(f"{alg_dict.__file__}: has no dict '{name}'; this EasyEdit revision keeps its registry elsewhere")
    report = RegistrationReport(steer_path=str(Path(alg_dict.__file__).resolve().parent.parent))
    for name in alg_names:
        alg_dict.HYPERPARAMS_CLASS_DICT[name] = {"train": SplitHyperParams, "apply": _easyedit_apply_class()}
        alg_dict.METHODS_CLASS_DICT[name] = {"train": generate_split, "apply": apply_split}
        report.methods.append(name)
    if evaluator:
        from ..evaluation import PreferenceUtilityEvaluator

        try:
            evaluate_package = _import("steer.evaluate")
        except Exception as error:
            report.warnings.append(f"steer.evaluate could not be imported ({type(error).__name__}: {error}); "
                                   "the evaluator was not added (install EasyEdit's evaluation requirements)")
        else:
            from .easyedit_judge import add_evaluator, register_judge_evaluator

            add_evaluator(evaluate_package, EVALUATOR_NAME, PreferenceUtilityEvaluator)
            register_judge_evaluator(evaluate_package)  # the generation-side judge evaluator, next to it
            try:
                evaluate_module = _import("steer.evaluate.evaluate")
                plugins = getattr(evaluate_module, "plugin_evaluators", None)
                if callable(plugins):  # EasyEdit with the plugin patch: no monkeypatching needed
                    plugins()[EVALUATOR_NAME] = evaluate_plugin
                    patched = True
                else:
                    patched = _patch_evaluator(evaluate_module)
            except Exception as error:
                patched = False
                report.warnings.append(f"steer.evaluate.evaluate could not be imported ({type(error).__name__}: {error})")
            if not patched:
                report.warnings.append("EasyEdit's Evaluator class was not found; 'preference_utility' is available "
                                       "through steer.evaluate.EVALUATORS only")
            report.evaluator = EVALUATOR_NAME
    if tokenizer is not None:
        message = check_prefix_helper(tokenizer)
        if message:
            report.warnings.append(message)
    return report
