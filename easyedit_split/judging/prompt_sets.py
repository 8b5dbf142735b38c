"""Which judge prompts and scoring rules are used: the package's own, or EasyEdit's / AxBench's read at run time.

    rubrics, version = load_prompt_set("easyedit")   # reads steer/evaluate/prompt_templates.py of an installed EasyEdit
    rules = SCORING_RULES["easyedit"]

No EasyEdit or AxBench text is copied into this package: the templates are read from the user's
installed checkout (anything importable on ``sys.path``, e.g. ``PYTHONPATH=/path/to/EasyEdit``), so a
judge number can be set beside theirs. The file is loaded by path without importing the ``steer``
package (whose ``__init__`` pulls in torch and friends). The prompt-set version recorded with every
result and used in the cache key is the name plus a hash of the three templates, so a changed
upstream text is never mixed with cached answers of the old one.

Scoring rules. "package" (default): a failed rating is missing (None) and is reported as such; every
sample is judged; ratings are kept as parsed. "easyedit" (EasyEdit's `Evaluator._llm_evaluate`): a
failed rating counts as 0; only the first sample of each prompt is judged; ratings are truncated to
integers (``int(float(x))``).
"""
from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Optional

from ..errors import EasyEditSplitError
from .rubrics import RUBRIC_VERSION, RUBRICS, Rubric

PROMPT_SETS = ("package", "easyedit", "axbench")

# (package, file inside it, {rubric: (attribute, its placeholders in our field order)})
_TEMPLATE_NAMES = {
    "concept": ("CONCEPT_RELEVANCE_TEMPLATE", ("concept", "sentence")),
    "instruction": ("INSTRUCTION_RELEVANCE_TEMPLATE", ("instruction", "sentence")),
    "fluency": ("FLUENCY_TEMPLATE", ("sentence",)),
}
_SOURCES = {
    "easyedit": ("steer", ("evaluate/prompt_templates.py",)),
    "axbench": ("axbench", ("templates/prompt_templates.py", "evaluators/prompt_templates.py",
                            "prompt_templates.py")),
}


class PromptSetError(EasyEditSplitError, RuntimeError):
    """The requested judge prompts cannot be read (the source is not installed or has changed)."""


@dataclass(frozen=True)
class ScoringRules:
    """How judge answers become scores (see the module docstring)."""

    name: str
    failed_is_zero: bool = False
    first_sample_only: bool = False
    truncate: bool = False

    def apply(self, rating: Optional[float]) -> Optional[float]:
        """One parsed rating under these rules."""
        if rating is None:
            return 0.0 if self.failed_is_zero else None
        return float(int(rating)) if self.truncate else rating


SCORING_RULES = {
    "package": ScoringRules("package"),
    "easyedit": ScoringRules("easyedit", failed_is_zero=True, first_sample_only=True, truncate=True),
}


@dataclass(frozen=True)
class ForeignRubric(Rubric):
    """A rubric whose template names its fields differently (EasyEdit's ``sentence`` is our ``generation``)
    and is stripped after formatting, as EasyEdit sends it."""

    placeholders: tuple[str, ...] = ()

    def render(self, **values: Optional[str]) -> str:
        missing = [field for field in self.fields if values.get(field) is None]
        if missing:
            raise ValueError(f"rubric '{self.name}' needs {', '.join(missing)} (got None)")
        return self.template.format(**{p: values[f] for p, f in zip(self.placeholders, self.fields)}).strip()


def _find_templates_file(source: str) -> Path:
    package, candidates = _SOURCES[source]
    spec = importlib.util.find_spec(package)  # a top-level find_spec does not run the package's __init__
    if spec is None or not spec.submodule_search_locations:
        raise PromptSetError(
            f"--judge-prompts {source}: the '{package}' package is not installed or not on the Python path; "
            f"install {'EasyEdit' if source == 'easyedit' else 'AxBench'} or put its checkout on PYTHONPATH, "
            f"or use --judge-prompts package")
    for location in spec.submodule_search_locations:
        for candidate in candidates:
            path = Path(location) / candidate
            if path.is_file():
                return path
    raise PromptSetError(f"--judge-prompts {source}: '{package}' is installed at "
                         f"{list(spec.submodule_search_locations)} but none of {list(candidates)} is there")


def _load_module(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"_easyedit_split_judge_templates_{abs(hash(str(path)))}", path)
    if spec is None or spec.loader is None:
        raise PromptSetError(f"cannot load judge templates from {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_prompt_set(name: str = "package") -> tuple[dict[str, Rubric], str]:
    """(rubric name -> rubric, version recorded with results and used in the cache key)."""
    if name == "package":
        return dict(RUBRICS), RUBRIC_VERSION
    if name not in _SOURCES:
        raise ValueError(f"--judge-prompts must be one of {', '.join(PROMPT_SETS)}, got {name!r}")
    path = _find_templates_file(name)
    module = _load_module(path)
    rubrics: dict[str, Rubric] = {}
    digest = hashlib.sha256()
    for rubric, (attribute, placeholders) in _TEMPLATE_NAMES.items():
        template = getattr(module, attribute, None)
        if not isinstance(template, str):
            raise PromptSetError(f"--judge-prompts {name}: {path} has no string {attribute}")
        digest.update(attribute.encode() + b"\0" + template.encode() + b"\0")
        rubrics[rubric] = ForeignRubric(name=rubric, fields=RUBRICS[rubric].fields, template=template,
                                        placeholders=placeholders)
    return rubrics, f"{name}-prompts-{digest.hexdigest()[:16]}"


def get_scoring_rules(name: str = "package") -> ScoringRules:
    """The named scoring rules; an unknown name is an error naming the flag."""
    try:
        return SCORING_RULES[name]
    except KeyError:
        raise ValueError(f"--judge-rules must be one of {', '.join(SCORING_RULES)}, got {name!r}") from None
