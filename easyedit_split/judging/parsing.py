"""Reading a 0-2 rating out of a judge's free-text answer.

The judge is told to end with ``Rating: N``. Judges decorate it (``**Rating:** 2``, ``Rating: [[2]]``,
``Rating: 2/2``, ``Rating: 1 out of 2.``), so the *last* line that contains ``rating`` followed by a
number is read. An answer without such a line, or with a number outside the scale, gives None:
a missing rating, which callers count and report. It is never turned into 0.
"""
from __future__ import annotations

import re
from typing import Optional

from .rubrics import RATING_MAX, RATING_MIN

_NUMBER = r"(-?\d+(?:\.\d+)?)"
# "rating", optional markdown/punctuation, a separator, optional brackets/markdown, the number,
# then optionally "/ D" or "out of D".
_RATING = re.compile(
    r"rating\W{0,4}?\s*(?:[:=\-]|is|of)\s*[\s\*_`\[\(\"']*" + _NUMBER + r"(?:\s*(?:/|out\s+of)\s*" + _NUMBER + r")?",
    re.IGNORECASE,
)


def parse_rating(
    text: Optional[str], low: float = RATING_MIN, high: float = RATING_MAX
) -> Optional[float]:
    """The judge's rating in [low, high], or None when absent, malformed or out of range.

    ``N/D`` and ``N out of D`` are accepted only when D equals `high` (the scale the judge was given).
    """
    if not text:
        return None
    matches = list(_RATING.finditer(text))
    if not matches:
        return None
    last = matches[-1]
    value = float(last.group(1))
    denominator = last.group(2)
    if denominator is not None and float(denominator) != float(high):
        return None
    if not low <= value <= high:
        return None
    return value
