"""A report folder is a unit: the report files it holds belong to one run.

`evaluate --output-dir DIR` (and `SteerEditor`/the main job) write `results.json`, CSVs, markdown and
plots into a folder that a later run may reuse. Without care a later run without `--generate` would
leave the earlier run's `generation_results.*` beside its new `results.json`. So every write records
the names of the files it wrote in `report_files.json`; the next write

1. refuses (before any compute, `check_report_folder`) when the folder holds report files of this
   package's names that no record lists (an older version or a hand copy: their origin is unknown,
   and deleting what the package may not have written is never done);
2. marks the record incomplete (listing the old and new names), writes its files, removes the files
   the earlier record lists and this run did not write, and writes the complete record last.

Only plain file names the record lists are removed, never anything else in the folder (the
resumable `generation/` subfolder keeps its own run record: `generation_eval.evaluator`).
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Callable, Mapping, Union

from .errors import EasyEditSplitError
from .storage.files import atomic_write_json

logger = logging.getLogger(__name__)

RECORD_FILE = "report_files.json"
RECORD_FORMAT = "easyedit_split.report_files"
REPORT_NAMES = frozenset({
    "results.json", "results.csv", "report.md", "preference_utility.png", "frontier.png", "manifold.png",
    "generation_results.json", "generation_results.csv", "generation_report.md", "generation.png",
})
"""Every file name a report writer of this package writes into a report folder."""
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,200}$")


class ReportFolderError(EasyEditSplitError, ValueError):
    """A report folder holds report files whose origin is unknown, or a malformed record."""


def _todo(folder: Path) -> str:
    return f"use another output directory, or delete those files from {folder}"


def read_record(folder: Union[str, Path]) -> set[str]:
    """The file names the package's last write recorded in `folder` (empty without a record)."""
    path = Path(folder) / RECORD_FILE
    if not path.exists():
        return set()
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError, OSError) as error:
        raise ReportFolderError(f"{path}: unreadable record of the report files ({type(error).__name__}); "
                                f"delete it and the report files beside it, or use another output directory") from None
    ours = isinstance(record, dict) and record.get("format") == RECORD_FORMAT
    files = record.get("files") if ours else None
    if not isinstance(files, list) or not all(isinstance(n, str) and _PLAIN_NAME.match(n) and n != RECORD_FILE
                                              for n in files):
        raise ReportFolderError(f"{path}: not a record of report files this package wrote; delete it and the report "
                                f"files beside it, or use another output directory")
    return set(files)


def check_report_folder(folder: Union[str, Path]) -> set[str]:
    """The recorded names; refuses a folder holding report-named files no record lists (origin unknown)."""
    folder = Path(folder)
    recorded = read_record(folder)
    if not folder.is_dir():
        return recorded
    unknown = sorted(name for name in REPORT_NAMES - recorded if (folder / name).exists())
    if unknown:
        raise ReportFolderError(f"{folder}: holds report files that no {RECORD_FILE} records ({', '.join(unknown)}): "
                                f"an earlier run's or someone else's, so a new report would mix with them; {_todo(folder)}")
    return recorded


def write_report_folder(folder: Union[str, Path], write: Callable[[Path], Mapping[str, Path]]) -> dict[str, Path]:
    """Run `write(folder)` (which returns {kind: path} of the files it wrote) as one unit (module docstring)."""
    folder = Path(folder)
    before = check_report_folder(folder)
    folder.mkdir(parents=True, exist_ok=True)
    record = folder / RECORD_FILE
    atomic_write_json(record, {"format": RECORD_FORMAT, "complete": False, "files": sorted(before | REPORT_NAMES)})
    paths = dict(write(folder))
    written = {Path(p).name for p in paths.values() if Path(p).parent.resolve() == folder.resolve()}
    for name in sorted(before - written):
        stale = folder / name
        if stale.is_file() or stale.is_symlink():
            logger.info("%s: removed, written by an earlier run into this report folder and not by this one", stale)
            stale.unlink()
    atomic_write_json(record, {"format": RECORD_FORMAT, "complete": True, "files": sorted(written)})
    return paths
