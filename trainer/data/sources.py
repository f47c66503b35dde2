"""What every data source yields: ``Example`` rows behind the ``ExampleSource`` interface."""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cxr_triage.labels import LABELS, NO_FINDING
from trainer.data.policies import ALLOWED
from trainer.errors import BadRow, DataError

# Findings that make a study abnormal; support devices alone do not (CheXpert's own "No Finding" rule).
PATHOLOGIES: tuple[str, ...] = tuple(
    label for label in LABELS if label not in (NO_FINDING, "Support Devices")
)


@dataclass(frozen=True)
class Example:
    """One labelled image. ``labels`` are raw (1 / 0 / -1 / NaN = blank) in ``LABELS`` order."""

    path: Path
    rel_path: str
    labels: tuple[float, ...]
    patient_id: str
    source: str
    where: str
    frontal: bool = True
    abnormal: float = math.nan
    split: str | None = None  # the source's own split ("train", "val", "test"), when it has one
    # For slice evaluation (trainer.slices); "" / NaN where the source does not say.
    sex: str = ""
    age: float = math.nan
    view: str = ""  # AP or PA


def demographics(sex: str | None, age: str | None, view: str | None) -> dict[str, object]:
    """``sex`` / ``age`` / ``view`` of an Example from CSV cells; anything unreadable is left unknown."""
    sex_text = (sex or "").strip().lower()
    try:
        years = float((age or "").strip().upper().rstrip("Y") or "nan")
    except ValueError:
        years = math.nan
    view_text = (view or "").strip().upper()
    return {
        "sex": {"male": "male", "m": "male", "female": "female", "f": "female"}.get(sex_text, ""),
        "age": years if 0 <= years < 130 else math.nan,
        "view": view_text if view_text in ("AP", "PA") else "",
    }

    def __post_init__(self) -> None:
        if len(self.labels) != len(LABELS):
            raise ValueError(f"{self.where}: expected {len(LABELS)} labels, got {len(self.labels)}")


class ExampleSource(Protocol):
    """A source of labelled images: CheXpert-layout folders, NIH ChestX-ray14, radiologists' verdicts."""

    @property
    def name(self) -> str: ...

    def examples(self) -> list[Example]:
        """Every example of the source; ``BadRowsError`` lists rows whose labels cannot be read."""
        ...


def parse_label(value: str | None) -> float:
    """A CSV cell -> 1.0 / 0.0 / -1.0 / NaN (blank); ``ValueError`` for anything else."""
    text = (value or "").strip()
    if not text:
        return math.nan
    number = float(text)  # raises ValueError for words
    if number not in ALLOWED:
        raise ValueError(text)
    return number


def derived_abnormal(labels: Sequence[float]) -> float:
    """Normal (0) when No Finding is 1, abnormal (1) when a pathology is positive or No Finding is 0."""
    by_name = dict(zip(LABELS, labels, strict=True))
    if by_name[NO_FINDING] == 1.0:
        return 0.0
    if any(by_name[p] == 1.0 for p in PATHOLOGIES) or by_name[NO_FINDING] == 0.0:
        return 1.0
    return math.nan


def read_csv_rows(path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number as an editor shows it, row) for each data row; the header is line 1."""
    try:
        handle = path.open(newline="", encoding="utf-8")
    except FileNotFoundError as exc:
        raise DataError(f"label file not found: {path}") from exc
    with handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None:
            raise DataError(f"{path} is empty")
        for row in reader:
            yield reader.line_num, row


def require_columns(path: Path, columns: Sequence[str], wanted: Sequence[str]) -> None:
    missing = [c for c in wanted if c not in columns]
    if missing:
        raise DataError(f"{path.name} lacks column(s) {missing}")


def bad(where: str, rel_path: str, problem: str) -> BadRow:
    return BadRow(where=where, path=rel_path, problem=problem)
