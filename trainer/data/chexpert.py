"""CheXpert layout: ``labels.csv`` (or ``train.csv`` + ``valid.csv``) with ``Path`` and the 14 label columns.

Paths in the official CSVs start with the dataset folder's own name (``CheXpert-v1.0-small/train/...``); in
``labels.csv`` of the public sample they are relative to the folder. Both resolve here.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

from cxr_triage.labels import LABELS
from trainer.data.sources import (
    Example,
    bad,
    demographics,
    derived_abnormal,
    parse_label,
    read_csv_rows,
    require_columns,
)
from trainer.errors import BadRow, BadRowsError, DataError

_PATIENT = re.compile(r"(patient\d+)")
# file name -> the split it holds; valid.csv is CheXpert's radiologist-labelled validation set
_SPLIT_FILES: tuple[tuple[str, str | None], ...] = (("labels.csv", None), ("train.csv", "train"))
_VALID_FILE = ("valid.csv", "val")


@dataclass(frozen=True)
class CheXpertSource:
    root: Path
    source_name: str = "chexpert"

    @property
    def name(self) -> str:
        return self.source_name

    def label_files(self) -> list[tuple[Path, str | None]]:
        labels = self.root / "labels.csv"
        if labels.is_file():
            return [(labels, None)]
        found = [(self.root / n, s) for n, s in (_SPLIT_FILES[1], _VALID_FILE) if (self.root / n).is_file()]
        if not found:
            raise DataError(f"no labels.csv, train.csv or valid.csv in {self.root}")
        return found

    def examples(self) -> list[Example]:
        examples: list[Example] = []
        problems: list[BadRow] = []
        for path, split in self.label_files():
            rows, bad_rows = self._read(path, split)
            examples += rows
            problems += bad_rows
        if problems:
            raise BadRowsError(problems)
        return examples

    def _read(self, csv_path: Path, split: str | None) -> tuple[list[Example], list[BadRow]]:
        with csv_path.open(newline="", encoding="utf-8") as handle:
            columns = next(csv.reader(handle), [])
        require_columns(csv_path, columns, ["Path", *LABELS])
        examples: list[Example] = []
        problems: list[BadRow] = []
        for line, row in read_csv_rows(csv_path):
            where = f"{csv_path.name} line {line}"
            rel = (row.get("Path") or "").strip()
            if not rel:
                problems.append(bad(where, "<empty>", "the Path cell is empty"))
                continue
            labels: list[float] = []
            for label in LABELS:
                try:
                    labels.append(parse_label(row.get(label)))
                except ValueError:
                    problems.append(
                        bad(
                            where,
                            rel,
                            f"column {label!r} holds {row.get(label)!r}; expected 1, 0, -1 or blank",
                        )
                    )
                    break
            else:
                examples.append(
                    Example(
                        path=self._resolve(rel),
                        rel_path=rel,
                        labels=tuple(labels),
                        patient_id=self._patient(row, rel),
                        source=(row.get("source") or "").strip() or self.source_name,
                        where=where,
                        frontal=(row.get("Frontal/Lateral") or "Frontal").strip().lower() != "lateral",
                        abnormal=self._abnormal(row, labels),
                        split=split,
                        **demographics(row.get("Sex"), row.get("Age"), row.get("AP/PA")),  # type: ignore[arg-type]
                    )
                )
        return examples, problems

    def _resolve(self, rel: str) -> Path:
        parts = Path(rel).parts
        if parts and parts[0] == self.root.name and not (self.root / rel).exists():
            return self.root.parent / rel
        return self.root / rel

    @staticmethod
    def _patient(row: dict[str, str], rel: str) -> str:
        explicit = (row.get("patient_id") or "").strip()
        if explicit:
            return explicit
        match = _PATIENT.search(rel)
        # Without a patient id every image is its own patient: splits can then leak across a patient's films.
        return match.group(1) if match else rel

    @staticmethod
    def _abnormal(row: dict[str, str], labels: list[float]) -> float:
        cell = (row.get("abnormal") or "").strip()
        if cell in ("0", "1"):
            return float(cell)
        return derived_abnormal(labels)
