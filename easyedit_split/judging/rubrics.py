"""The judge's three rubrics (concept, instruction, fluency), written for this package and versioned.

Each rubric asks for a short justification and then a final line ``Rating: N`` with N in 0..2
(EasyEdit's and AxBench's scale). Changing any text below changes what a rating means: bump
``RUBRIC_VERSION`` so cached answers of the old text are not reused and results record which text
produced them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

RUBRIC_VERSION = "easyedit_split-rubrics-v1"
"""Recorded in every cached answer and result; part of the cache key."""

RATING_MIN = 0
RATING_MAX = 2

_SCALE_AND_FORMAT = (
    "Give a rating on a 0 to 2 scale. {scale} "
    "First explain your judgement in one or two sentences. Then end your reply with one line of the form\n"
    "Rating: N\n"
    "where N is 0, 1 or 2, and write nothing after that line."
)


@dataclass(frozen=True)
class Rubric:
    """One rating question: its name, the fields it needs and its prompt text."""

    name: str
    fields: tuple[str, ...]
    template: str

    def render(self, **values: Optional[str]) -> str:
        """The judge prompt for one item; a needed field that is None or absent is an error naming it."""
        missing = [field for field in self.fields if values.get(field) is None]
        if missing:
            raise ValueError(f"rubric '{self.name}' needs {', '.join(missing)} (got None)")
        return self.template.format(**{field: values[field] for field in self.fields})


CONCEPT = Rubric(
    name="concept",
    fields=("concept", "generation"),
    template=(
        "You are grading a text written by a language model. Decide only how strongly the text below "
        "expresses the given concept. Ignore grammar, style and whether the text makes sense.\n\n"
        + _SCALE_AND_FORMAT.format(scale=(
            "0 means the concept does not appear at all; 1 means it appears only weakly, in passing or "
            "in a forced way; 2 means the concept is clearly and naturally part of the text."))
        + "\n\n<concept>\n{concept}\n</concept>\n\n<text>\n{generation}\n</text>\n"
    ),
)

INSTRUCTION = Rubric(
    name="instruction",
    fields=("instruction", "generation"),
    template=(
        "You are grading a text written by a language model in reply to an instruction. Decide only "
        "whether the text is on the topic the instruction asks about. Ignore grammar, fluency, "
        "completeness and correctness.\n\n"
        + _SCALE_AND_FORMAT.format(scale=(
            "0 means the text has nothing to do with the instruction; 1 means it touches the topic only "
            "loosely or indirectly; 2 means it clearly addresses what the instruction asks about."))
        + "\n\n<instruction>\n{instruction}\n</instruction>\n\n<text>\n{generation}\n</text>\n"
    ),
)

FLUENCY = Rubric(
    name="fluency",
    fields=("generation",),
    template=(
        "You are grading a text written by a language model. Decide only how fluent it is as English "
        "prose: natural wording, correct grammar, no loops of repeated words or phrases. Ignore whether "
        "it is complete, relevant or informative.\n\n"
        + _SCALE_AND_FORMAT.format(scale=(
            "0 means it is broken, incomprehensible or highly repetitive; 1 means it is readable but has "
            "clear errors or awkward phrasing; 2 means it reads as fluent, nearly flawless English."))
        + "\n\n<text>\n{generation}\n</text>\n"
    ),
)

RUBRICS: dict[str, Rubric] = {rubric.name: rubric for rubric in (CONCEPT, INSTRUCTION, FLUENCY)}
RUBRIC_NAMES: tuple[str, ...] = tuple(RUBRICS)
"""The order in which ratings are reported and combined."""


def get_rubric(name: str) -> Rubric:
    """The rubric called `name`; an unknown name is an error listing the known ones."""
    try:
        return RUBRICS[name]
    except KeyError:
        raise ValueError(f"unknown rubric '{name}'; known: {', '.join(RUBRIC_NAMES)}") from None


def judge_prompts(
    generation: str,
    instruction: Optional[str] = None,
    concept: Optional[str] = None,
    rubrics: tuple[str, ...] = RUBRIC_NAMES,
) -> dict[str, str]:
    """Rubric name -> rendered judge prompt for one generated text."""
    values = {"generation": generation, "instruction": instruction, "concept": concept}
    return {name: get_rubric(name).render(**values) for name in rubrics}
