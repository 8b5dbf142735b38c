"""Polarity-paired datasets: the project's shipped data and loaders for EasyEdit's layouts.

Every loader returns the same two record types, so that training and evaluation never see
a file format:

* :class:`PolarityPair` -- EasyEdit's standard training fields ``question`` / ``matching`` /
  ``not_matching`` (one prompt, a concept-positive and a concept-negative completion), plus
  ``concept_id`` / ``concept`` for multi-concept data such as AxBench.
* :class:`GenerationExample` -- EasyEdit's generation fields ``input`` / ``reference_response``.

Field maps follow EasyEdit's ``hparams/Steer/dataset_format.yaml``. A file's layout is detected
from its extension and columns; ``dataset_format=`` overrides the detection. A row with a missing
or empty field is an error naming the file, the row and the field: nothing is skipped silently.

Completions are returned exactly as stored (no stripping). EasyEdit's psychopathy data use a
leading space (``" Yes"``), which is off-distribution after a chat template's generation prompt;
:func:`strip_completions` removes it where the caller wants that. The shipped datasets have no
leading spaces.
"""
from __future__ import annotations

import csv
import json
import logging
import math
import random
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Sequence

from .errors import DatasetError, excerpt

logger = logging.getLogger(__name__)

__all__ = [
    "PolarityPair",
    "GenerationExample",
    "FieldMap",
    "DATASET_FORMATS",
    "GENERATION_FORMATS",
    "SUPPORTED_EXTENSIONS",
    "list_datasets",
    "dataset_path",
    "load_dataset",
    "load_generation_data",
    "load_pairs_file",
    "load_generation_file",
    "detect_format",
    "group_by_concept",
    "split_pairs",
    "strip_completions",
]

DATASETS_DIR = Path(__file__).resolve().parent / "datasets"
SUPPORTED_EXTENSIONS = (".jsonl", ".json", ".csv", ".parquet")

MAX_DATASET_BYTES = 512 << 20
"""Largest dataset file read (512 MiB), checked before reading: split a larger file."""
MAX_ROW_BYTES = 1 << 20
"""Largest row (1 MiB of text, all fields together), checked as rows are read: no model's context holds more,
and a huge row would otherwise be tokenized (gigabytes of memory) before any length check."""


@dataclass(frozen=True)
class PolarityPair:
    """One prompt with a concept-positive (``matching``) and concept-negative (``not_matching``) completion."""

    question: str
    matching: str
    not_matching: str
    concept_id: int = 0
    concept: str | None = None


@dataclass(frozen=True)
class GenerationExample:
    """One generation prompt; ``reference_response`` is optional because many prompt sets have none."""

    input: str
    reference_response: str | None = None
    concept_id: int = 0
    concept: str | None = None


@dataclass(frozen=True)
class FieldMap:
    """Which column of a file holds each standard field (EasyEdit's ``field_names``).

    ``matching`` is the reference-response column for generation formats; ``not_matching`` is
    then ``None``. ``concept``, ``concept_id`` and ``category`` are optional columns: when the
    map names them and a row lacks them, the defaults (``None``, ``0``, no filtering) apply.
    """

    question: str
    matching: str | None
    not_matching: str | None = None
    concept: str | None = None
    concept_id: str | None = None
    category: str | None = None

    def required(self) -> tuple[str, ...]:
        """Columns every row must have, non-empty."""
        return tuple(c for c in (self.question, self.matching, self.not_matching) if c is not None)


# Training layouts (EasyEdit's `train:` section of dataset_format.yaml).
DATASET_FORMATS: dict[str, FieldMap] = {
    "standard": FieldMap("question", "matching", "not_matching"),
    "psychopathy": FieldMap("question", "answer_matching_behavior", "answer_not_matching_behavior"),
    "powerseeking": FieldMap("question", "matching", "not_matching"),
    "axbench": FieldMap(
        "input", "winning_output", "losing_output",
        concept="output_concept", concept_id="concept_id", category="category",
    ),
    "steer_eval": FieldMap("question", "pos_answer", "neg_answer", concept="concept", concept_id="concept_id"),
}

# Generation layouts (EasyEdit's `generation:` section). `matching` holds the reference column.
GENERATION_FORMATS: dict[str, FieldMap] = {
    "generation": FieldMap("input", "reference_response"),
    "psychopathy": FieldMap("question", "answer_matching_behavior"),
    "standard": FieldMap("question", "matching"),
    "powerseeking": FieldMap("question", "matching"),
    "sentiment_prompts": FieldMap("prompt", "continuation"),
    "axbench": FieldMap("input", None, concept="output_concept", concept_id="concept_id", category="category"),
}

# Order matters: the most specific column sets first.
_TRAIN_SIGNATURES: tuple[tuple[str, frozenset[str]], ...] = (
    ("psychopathy", frozenset({"answer_matching_behavior", "answer_not_matching_behavior"})),
    ("axbench", frozenset({"winning_output", "losing_output"})),
    ("steer_eval", frozenset({"pos_answer", "neg_answer"})),
    ("standard", frozenset({"matching", "not_matching"})),
)
_GENERATION_SIGNATURES: tuple[tuple[str, frozenset[str]], ...] = (
    ("generation", frozenset({"input", "reference_response"})),
    ("psychopathy", frozenset({"question", "answer_matching_behavior"})),
    ("sentiment_prompts", frozenset({"prompt", "continuation"})),
    ("standard", frozenset({"question", "matching"})),
    ("axbench", frozenset({"input", "output_concept"})),
    ("generation", frozenset({"input"})),
)


# --------------------------------------------------------------------------- shipped datasets

def list_datasets() -> list[str]:
    """Names of the datasets shipped with the package (usable wherever a path is)."""
    if not DATASETS_DIR.is_dir():
        return []
    return sorted(p.name for p in DATASETS_DIR.iterdir() if p.is_dir() and _split_files(p))


def _split_files(directory: Path) -> dict[str, Path]:
    """Map split name -> file for the data files in a dataset directory."""
    files: dict[str, Path] = {}
    for path in sorted(directory.iterdir()):
        if path.is_file() and path.suffix.lower() in SUPPORTED_EXTENSIONS:
            files.setdefault(path.stem, path)
    return files


def dataset_path(name_or_path: str | Path, split: str = "train") -> Path:
    """Resolve a shipped dataset name, a dataset directory or a file to one data file.

    A bare name (no path separator, no extension) that matches a shipped dataset wins over a
    same-named directory in the working directory, so that ``--dataset sentiment`` always means
    the package's data. A directory resolves to ``<dir>/<split>.<ext>``; a file is returned as is
    (``split`` is then not used).
    """
    text = str(name_or_path)
    is_bare_name = isinstance(name_or_path, str) and "/" not in text and "\\" not in text and not Path(text).suffix
    if is_bare_name and text in list_datasets():
        return _resolve_split(DATASETS_DIR / text, split, label=f"shipped dataset '{text}'")
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        return _resolve_split(path, split, label=f"dataset directory {path}")
    if is_bare_name:
        raise DatasetError(
            f"Unknown dataset '{text}'. Shipped datasets: {', '.join(list_datasets()) or '(none)'}; "
            f"otherwise pass the path of a data file ({', '.join(SUPPORTED_EXTENSIONS)}) or of a directory "
            f"holding <split> files, e.g. EasyEdit's data/{text}/train.jsonl."
        )
    raise DatasetError(f"Dataset file not found: {path}")


def _resolve_split(directory: Path, split: str, label: str) -> Path:
    files = _split_files(directory)
    if split not in files:
        raise DatasetError(
            f"{label} has no split '{split}'; available splits: {', '.join(sorted(files)) or '(none)'} "
            f"(files {directory}/<split>{{{','.join(SUPPORTED_EXTENSIONS)}}})."
        )
    return files[split]


def _shipped_concept(path: Path) -> str | None:
    """The concept name of a shipped dataset file (its directory name), else None."""
    try:
        relative = path.resolve().relative_to(DATASETS_DIR)
    except ValueError:
        return None
    return relative.parts[0] if len(relative.parts) > 1 else None


def load_dataset(
    name_or_path: str | Path,
    split: str = "train",
    dataset_format: str | None = None,
    positive_only: bool = True,
) -> list[PolarityPair]:
    """Load polarity pairs from a shipped dataset name, a dataset directory or a file.

    ``dataset_format`` is one of :data:`DATASET_FORMATS` (detected from the columns when None).
    ``positive_only`` applies to AxBench files: like EasyEdit, only rows with ``category ==
    "positive"`` and ``concept_id >= 0`` are steering examples; the dropped rows are counted in the log.
    """
    path = dataset_path(name_or_path, split)
    pairs = load_pairs_file(path, dataset_format=dataset_format, positive_only=positive_only)
    concept = _shipped_concept(path)
    if concept is not None:
        pairs = [replace(p, concept=concept) if p.concept is None else p for p in pairs]
    return pairs


def load_generation_data(
    name_or_path: str | Path,
    split: str = "test",
    dataset_format: str | None = None,
) -> list[GenerationExample]:
    """Load generation prompts (``input`` + optional ``reference_response``) by name, directory or file.

    For the shipped polarity datasets the prompt is ``question`` and the reference is ``matching``,
    as EasyEdit's ``psychopathy`` generation entry does.
    """
    path = dataset_path(name_or_path, split)
    examples = load_generation_file(path, dataset_format=dataset_format)
    concept = _shipped_concept(path)
    if concept is not None:
        examples = [replace(e, concept=concept) if e.concept is None else e for e in examples]
    return examples


# --------------------------------------------------------------------------- file reading

# A row is (location, record); location is "line N" (1-based) or "row N" (0-based index).
_Row = tuple[str, dict[str, Any]]


def _read_rows(path: Path) -> list[_Row]:
    """Read a data file into (location, record) rows, naming the file and line on malformed input."""
    ext = path.suffix.lower()
    if ext == ".jsonl":
        return _read_jsonl(path)
    if ext == ".json":
        return _read_json(path)
    if ext == ".csv":
        return _read_csv(path)
    if ext == ".parquet":
        return _read_parquet(path)
    raise DatasetError(f"{path}: unsupported file extension '{ext}'; supported: {', '.join(SUPPORTED_EXTENSIONS)}.")


def _decode(raw: bytes, path: Path, location: str) -> str:
    """UTF-8 text of one line or file; an error names the file, the line and the byte."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}, {location}: not UTF-8 text (byte {exc.start} of the {location.split()[0]}); "
                           "save the file as UTF-8") from None


def _read_jsonl(path: Path) -> list[_Row]:
    rows: list[_Row] = []
    with path.open("rb") as handle:
        line_number = 0
        while True:
            raw = handle.readline(MAX_ROW_BYTES + 1)  # bounded: a 1 GB line is refused, not read
            if not raw:
                break
            line_number += 1
            if len(raw) > MAX_ROW_BYTES and not raw.endswith(b"\n"):
                raise DatasetError(f"{path}, line {line_number}: the row is longer than {MAX_ROW_BYTES} bytes "
                                   "(data.MAX_ROW_BYTES); shorten it or leave it out")
            line = _decode(raw, path, f"line {line_number}")
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{path}, line {line_number}: malformed JSON ({exc.msg} at column {exc.colno}).") from exc
            except RecursionError:
                raise DatasetError(f"{path}, line {line_number}: JSON nested too deeply.") from None
            if not isinstance(record, dict):
                raise DatasetError(
                    f"{path}, line {line_number}: expected a JSON object per line, got {type(record).__name__}."
                )
            rows.append((f"line {line_number}", record))
    return rows


def _read_json(path: Path) -> list[_Row]:
    try:
        data = json.loads(_decode(path.read_bytes(), path, "file"))
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}, line {exc.lineno}: malformed JSON ({exc.msg} at column {exc.colno}).") from exc
    except RecursionError:
        raise DatasetError(f"{path}: JSON nested too deeply.") from None
    if isinstance(data, dict):  # EasyEdit reads a single object as a one-row dataset
        data = [data]
    if not isinstance(data, list):
        raise DatasetError(f"{path}: expected a JSON list of objects, got {type(data).__name__}.")
    rows: list[_Row] = []
    for index, record in enumerate(data):
        if not isinstance(record, dict):
            raise DatasetError(f"{path}, row {index}: expected a JSON object, got {type(record).__name__}.")
        rows.append((f"row {index}", record))
    return rows


def _read_csv(path: Path) -> list[_Row]:
    rows: list[_Row] = []
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        try:
            header = reader.fieldnames  # reads the header, so line_num now counts it
            if header is None:
                return rows
            start_line = reader.line_num + 1  # a record's location is the line it starts on
            for record in reader:
                if None in record:
                    raise DatasetError(
                        f"{path}, line {start_line}: more values than header columns ({', '.join(reader.fieldnames or [])})."
                    )
                if any(value is not None and value != "" for value in record.values()):
                    rows.append((f"line {start_line}", dict(record)))
                start_line = reader.line_num + 1
        except csv.Error as exc:
            raise DatasetError(f"{path}, line {reader.line_num}: malformed CSV ({exc}).") from exc
        except UnicodeDecodeError as exc:
            raise DatasetError(f"{path}, near line {reader.line_num + 1}: not UTF-8 text; save the file as UTF-8") from exc
    return rows


def _read_parquet(path: Path) -> list[_Row]:
    import pandas as pd  # imported here: only parquet needs it

    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several unrelated types for a bad file
        raise DatasetError(f"{path}: cannot read parquet file ({exc}).") from exc
    return [(f"row {index}", record) for index, record in enumerate(frame.to_dict("records"))]


# --------------------------------------------------------------------------- format detection

def detect_format(columns: Iterable[str], path: str | Path = "<data>", generation: bool = False) -> str:
    """Name the layout whose required columns are all present; error listing the known layouts otherwise."""
    present = set(columns)
    signatures = _GENERATION_SIGNATURES if generation else _TRAIN_SIGNATURES
    for name, needed in signatures:
        if needed <= present:
            return name
    formats = GENERATION_FORMATS if generation else DATASET_FORMATS
    known = "; ".join(f"{name}: {', '.join(fmap.required())}" for name, fmap in formats.items())
    hint = ""
    if not generation and {"input", "reference_response"} <= present:
        hint = " This looks like generation data: use load_generation_data()."
    raise DatasetError(
        f"{path}: cannot tell the dataset layout from its columns ({', '.join(sorted(present)) or 'none'}). "
        f"Known layouts and their columns -- {known}. Pass dataset_format= to choose one.{hint}"
    )


def _field_map(dataset_format: str | None, rows: Sequence[_Row], path: Path, generation: bool) -> tuple[str, FieldMap]:
    formats = GENERATION_FORMATS if generation else DATASET_FORMATS
    if dataset_format is None:
        name = detect_format(rows[0][1].keys(), path, generation=generation)
    else:
        name = dataset_format
        if name not in formats:
            raise DatasetError(
                f"Unknown dataset_format '{name}' for {path}; choose one of: {', '.join(formats)}."
            )
    return name, formats[name]


# --------------------------------------------------------------------------- row conversion

def _is_empty(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


def _text(record: dict[str, Any], column: str, path: Path, location: str, fmt: str) -> str:
    """A required non-empty string field, or an error naming file, row, field and the row's fields."""
    had = ", ".join(sorted(map(str, record))) or "none"
    if column not in record:
        raise DatasetError(f"{path}, {location}: missing field '{column}' ({fmt} layout); the row has fields: {had}.")
    value = record[column]
    if _is_empty(value):
        raise DatasetError(f"{path}, {location}: empty field '{column}' ({fmt} layout); the row has fields: {had}.")
    if not isinstance(value, str):
        raise DatasetError(
            f"{path}, {location}: field '{column}' must be text, got {type(value).__name__} ({excerpt(value)}); "
            f"the row has fields: {had}."
        )
    return value


def _optional_text(record: dict[str, Any], column: str | None) -> str | None:
    if column is None or _is_empty(record.get(column)):
        return None
    return str(record[column])


def _concept_id(record: dict[str, Any], column: str | None, path: Path, location: str) -> int:
    if column is None or _is_empty(record.get(column)):
        return 0
    value = record[column]
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        number = float("nan")
    if not math.isfinite(number) or number != int(number):
        raise DatasetError(f"{path}, {location}: field '{column}' must be an integer concept id, got {excerpt(value)}.")
    return int(number)


MAX_CONCEPT_ID_FLOOR = 20_000
"""Concept ids are rows of a stacked `[n_concepts, hidden]` file: an id above
max(this, 64 x the number of concepts present) is taken for a mistake, not a reason to allocate."""


def _check_concept_ids(path: Path, located: Sequence[tuple[str, int]]) -> None:
    """Negative ids, and ids far beyond the number of concepts present, are errors naming the row."""
    for location, concept_id in located:
        if concept_id < 0:
            raise DatasetError(f"{path}, {location}: concept_id {concept_id} is negative; concept ids are 0, 1, 2, ...")
    distinct = {concept_id for _, concept_id in located}
    limit = max(MAX_CONCEPT_ID_FLOOR, 64 * len(distinct))
    for location, concept_id in located:
        if concept_id >= limit:
            raise DatasetError(
                f"{path}, {location}: concept_id {concept_id} is far beyond the {len(distinct)} concepts in the file "
                f"(ids index the rows of a stacked [n_concepts, hidden] file; at most {limit - 1} is accepted here); "
                "renumber the concepts from 0")


def _keep_axbench_row(record: dict[str, Any], fmap: FieldMap, concept_id: int) -> bool:
    """EasyEdit trains AxBench concepts on rows with category 'positive' and a concept id >= 0."""
    if concept_id < 0:
        return False
    if fmap.category is None or fmap.category not in record:
        return True
    return str(record[fmap.category]) == "positive"


def _load_rows(path: str | Path) -> tuple[Path, list[_Row]]:
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"Dataset file not found: {path}")
    size = path.stat().st_size
    if size > MAX_DATASET_BYTES:
        raise DatasetError(f"{path}: {size} bytes; a dataset file is at most {MAX_DATASET_BYTES} bytes "
                           "(data.MAX_DATASET_BYTES); split it")
    rows = _read_rows(path)
    for location, record in rows:  # every format: no row larger than MAX_ROW_BYTES of text
        length = sum(len(value) for value in record.values() if isinstance(value, str))
        if length > MAX_ROW_BYTES:
            raise DatasetError(f"{path}, {location}: the row holds {length} characters of text, more than "
                               f"{MAX_ROW_BYTES} (data.MAX_ROW_BYTES); shorten it or leave it out")
    if not rows:
        raise DatasetError(f"{path}: the file holds no rows.")
    return path, rows


def load_pairs_file(
    path: str | Path,
    dataset_format: str | None = None,
    positive_only: bool = True,
) -> list[PolarityPair]:
    """Read one file of polarity pairs in any supported layout (see :func:`load_dataset`)."""
    path, rows = _load_rows(path)
    fmt, fmap = _field_map(dataset_format, rows, path, generation=False)
    pairs: list[PolarityPair] = []
    located: list[tuple[str, int]] = []
    dropped = 0
    identical = 0
    for location, record in rows:
        concept_id = _concept_id(record, fmap.concept_id, path, location)
        if fmt == "axbench" and positive_only and not _keep_axbench_row(record, fmap, concept_id):
            dropped += 1
            continue
        if not (fmt == "axbench" and concept_id == -1):  # AxBench's marker of concept-free (negative) rows
            located.append((location, concept_id))
        pair = PolarityPair(
            question=_text(record, fmap.question, path, location, fmt),
            matching=_text(record, fmap.matching, path, location, fmt),
            not_matching=_text(record, fmap.not_matching, path, location, fmt),
            concept_id=concept_id,
            concept=_optional_text(record, fmap.concept),
        )
        identical += pair.matching == pair.not_matching
        pairs.append(pair)
    _check_concept_ids(path, located)
    if dropped:
        logger.info("%s: kept %d positive AxBench rows, left out %d non-positive rows", path, len(pairs), dropped)
    if identical:
        logger.warning("%s: %d pairs have identical matching and not_matching completions", path, identical)
    if not pairs:
        raise DatasetError(f"{path}: no usable rows ({dropped} rows are not positive AxBench examples).")
    logger.debug("%s: loaded %d pairs (%s layout)", path, len(pairs), fmt)
    return pairs


def load_generation_file(path: str | Path, dataset_format: str | None = None) -> list[GenerationExample]:
    """Read one file of generation prompts in any supported layout (see :func:`load_generation_data`)."""
    path, rows = _load_rows(path)
    fmt, fmap = _field_map(dataset_format, rows, path, generation=True)
    examples: list[GenerationExample] = []
    for location, record in rows:
        reference = None
        if fmap.matching is not None and fmap.matching in record:
            # A reference column that the layout names but a row leaves empty is still an error.
            reference = _text(record, fmap.matching, path, location, fmt)
        examples.append(
            GenerationExample(
                input=_text(record, fmap.question, path, location, fmt),
                reference_response=reference,
                concept_id=_concept_id(record, fmap.concept_id, path, location),
                concept=_optional_text(record, fmap.concept),
            )
        )
    # AxBench generation rows carry concept_id -1 for concept-free prompts, as EasyEdit's data do
    _check_concept_ids(path, [(location, example.concept_id) for (location, _), example in zip(rows, examples)
                              if example.concept_id != -1])
    return examples


# --------------------------------------------------------------------------- utilities

def group_by_concept(pairs: Iterable[PolarityPair]) -> dict[int, list[PolarityPair]]:
    """Group pairs by ``concept_id`` (ids ascending, file order kept): each concept is its own job."""
    groups: dict[int, list[PolarityPair]] = {}
    for pair in pairs:
        groups.setdefault(pair.concept_id, []).append(pair)
    return {concept_id: groups[concept_id] for concept_id in sorted(groups)}


def split_pairs(
    pairs: Sequence[PolarityPair], test_fraction: float = 0.25, seed: int = 0
) -> tuple[list[PolarityPair], list[PolarityPair]]:
    """Deterministic train/test split, done within each concept so every concept appears in both.

    Each concept with at least two pairs puts ``round(n * test_fraction)`` pairs (at least one,
    at most n - 1) in the test set. Both parts keep the input order.
    """
    if not 0.0 < test_fraction < 1.0:
        raise DatasetError(f"test_fraction must be between 0 and 1 (exclusive), got {test_fraction}.")
    rng = random.Random(seed)
    by_concept: dict[int, list[int]] = {}
    for index, pair in enumerate(pairs):
        by_concept.setdefault(pair.concept_id, []).append(index)
    test_indices: set[int] = set()
    for concept_id in sorted(by_concept):
        indices = by_concept[concept_id]
        if len(indices) < 2:
            continue
        n_test = min(max(round(len(indices) * test_fraction), 1), len(indices) - 1)
        test_indices.update(rng.sample(indices, n_test))
    train = [pair for index, pair in enumerate(pairs) if index not in test_indices]
    test = [pair for index, pair in enumerate(pairs) if index in test_indices]
    return train, test


def strip_completions(pairs: Iterable[PolarityPair]) -> list[PolarityPair]:
    """Pairs with surrounding whitespace removed from both completions (e.g. psychopathy's ``" Yes"``)."""
    return [replace(p, matching=p.matching.strip(), not_matching=p.not_matching.strip()) for p in pairs]
