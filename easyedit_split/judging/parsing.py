"""Reading a 0-2 rating out of a judge's free-text answer.

The judge is told to end with ``Rating: N``. Judges decorate it (``**Rating:** 2``, ``Rating: [[2]]``,
``Rating: 2/2``, ``Rating: 1 out of 2.``), so the *last* line that contains ``rating`` followed by a
number is read. A line that *starts* with the rating (``Rating: 2``, ``**Rating:** 2``) is explicit and wins
over a mention of "rating" inside prose (``Note: a rating of 0 would mean absent``): the last explicit
line is read, and prose mentions only when there is no explicit line. An answer without such a line, or with a number outside the scale, gives None:
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
# An explicit rating line: only markdown/heading/bullet characters before "rating" on its line.
_LINE_START = re.compile(r"(?:^|\n)[ \t#>\*_`\-]*$")


def _is_explicit(text: str, match: "re.Match[str]") -> bool:
    return bool(_LINE_START.search(text[:match.start()]))


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
    explicit = [match for match in matches if _is_explicit(text, match)]
    last = (explicit or matches)[-1]
    value = float(last.group(1))
    denominator = last.group(2)
    if denominator is not None and float(denominator) != float(high):
        return None
    if not low <= value <= high:
        return None
    return value
