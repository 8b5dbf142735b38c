"""A disk cache of judge answers: one JSONL file, one line per answer, appended as answers arrive.

Key: (judge model id, rubric version, rubric name, sha256 of the rendered prompt). The prompt holds
the item's text (generation, instruction, concept), so the same generation judged again, in a
re-run or a resumed run, is read from disk instead of asked again.

Each line is written with one ``write`` followed by flush and fsync, so a killed run leaves at most
one partial last line. That line is dropped (with a warning) when the file is opened; any other
malformed line is an error naming the file and line.

Every answer is a line, so a question asked three times without a rating has three lines: `asks(key)`
counts them, and a resumed run asks only the attempts a killed run had left (`rating.rate_items_async`).
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import threading
from pathlib import Path
from typing import Any, Optional, Union

from ..errors import EasyEditSplitError, excerpt

logger = logging.getLogger(__name__)


class JudgeCacheError(EasyEditSplitError, ValueError):
    """The cache file is malformed somewhere other than a truncated last line."""


def prompt_hash(prompt: str) -> str:
    """sha256 hex digest of the rendered judge prompt (the item's text)."""
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()


def cache_key(judge_id: str, rubric_version: str, rubric: str, prompt: str) -> str:
    """The cache key of one judge question."""
    return "\x1f".join((judge_id, rubric_version, rubric, prompt_hash(prompt)))


class JudgeCache:
    """Append-only JSONL store: key -> {"answer": str, "rating": float | None, ...}."""

    def __init__(self, path: Union[str, Path]):
        self.path = Path(path)
        self._entries: dict[str, dict[str, Any]] = {}
        self._asks: dict[str, int] = {}
        self._lock = threading.Lock()
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        complete_end = data.rfind(b"\n") + 1
        if complete_end < len(data):
            logger.warning("%s: dropping a truncated last line (%d bytes) left by an interrupted run",
                           self.path, len(data) - complete_end)
            with open(self.path, "r+b") as handle:
                handle.truncate(complete_end)
                handle.flush()
                os.fsync(handle.fileno())
        for number, raw in enumerate(data[:complete_end].split(b"\n"), start=1):
            if not raw.strip():
                continue
            self._check_and_store(number, raw)

    def _check_and_store(self, number: int, raw: bytes) -> None:
        """One line: UTF-8 JSON object with a string `key`, a string (or null) `answer`, a finite or null
        `rating`; anything else is an error naming the file and line (why: a bad entry must not become a rating)."""
        where = f"{self.path}: line {number}"
        fix = "delete the line (or the file) to re-ask those items"
        try:
            entry = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as error:
            raise JudgeCacheError(f"{where} is not UTF-8 text (byte {error.start}); {fix}") from None
        except (json.JSONDecodeError, RecursionError) as error:
            raise JudgeCacheError(f"{where} is not a cache entry ({excerpt(str(error))[1:-1]}); {fix}") from None
        if not isinstance(entry, dict) or not isinstance(entry.get("key"), str):
            raise JudgeCacheError(f"{where} is not a cache entry (no string 'key'); {fix}")
        answer, rating = entry.get("answer"), entry.get("rating")
        if answer is not None and not isinstance(answer, str):
            raise JudgeCacheError(f"{where}: 'answer' must be text, got {type(answer).__name__}; {fix}")
        if rating is not None and (isinstance(rating, bool) or not isinstance(rating, (int, float))
                                   or not math.isfinite(rating)):
            raise JudgeCacheError(f"{where}: 'rating' must be a finite number or null, got {excerpt(rating)}; {fix}")
        self._entries[entry["key"]] = entry
        self._asks[entry["key"]] = self._asks.get(entry["key"], 0) + 1

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def get(self, key: str) -> Optional[dict[str, Any]]:
        """The stored entry for `key`, or None."""
        return self._entries.get(key)

    def asks(self, key: str) -> int:
        """How many answers are stored for `key` (each ask appends one line, rated or not)."""
        return self._asks.get(key, 0)

    def put(self, key: str, entry: dict[str, Any]) -> None:
        """Store `entry` under `key` and append it to the file durably (flush + fsync)."""
        record = {**entry, "key": key}
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(line)
                handle.flush()
                os.fsync(handle.fileno())
            self._entries[key] = record
            self._asks[key] = self._asks.get(key, 0) + 1
