"""NIH ChestX-ray14 adapter: ``Data_Entry_2017.csv`` (``Finding Labels`` joined by ``|``) -> our 14 labels.

The mapping is the one the public sample set documents (its README, "Label mapping"): NIH states each of its
14 findings as present or absent, so mapped columns are 1/0; what NIH does not label stays blank (unknown).
Images are looked up in ``images/`` and in the official archive folders ``images_001/images`` ... ``_012``.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cxr_triage.labels import LABELS, NO_FINDING
from trainer.data.sources import Example, bad, demographics, read_csv_rows, require_columns
from trainer.errors import BadRow, BadRowsError, DataError

LABEL_FILES: Final = ("Data_Entry_2017.csv", "Data_Entry_2017_v2020.csv")
NIH_FINDINGS: Final = frozenset(
    {
        "No Finding", "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion", "Emphysema",
        "Fibrosis", "Hernia", "Infiltration", "Mass", "Nodule", "Pleural_Thickening", "Pneumonia",
        "Pneumothorax",
    }
)  # fmt: skip
# NIH finding -> our column, for findings that map one to one (Mass and Nodule both become Lung Lesion).
DIRECT: Final[dict[str, str]] = {
    "Atelectasis": "Atelectasis",
    "Cardiomegaly": "Cardiomegaly",
    "Consolidation": "Consolidation",
    "Edema": "Edema",
    "Pneumonia": "Pneumonia",
    "Pneumothorax": "Pneumothorax",
    "Effusion": "Pleural Effusion",
    "Mass": "Lung Lesion",
    "Nodule": "Lung Lesion",
    "Pleural_Thickening": "Pleural Other",
}
# Findings that look like an opacity: without Infiltration, Lung Opacity is then unknown rather than 0.
OPACITY_LIKE: Final = frozenset(
    {"Consolidation", "Pneumonia", "Edema", "Atelectasis", "Mass", "Nodule", "Fibrosis"}
)
NOT_LABELLED_BY_NIH: Final = ("Enlarged Cardiomediastinum", "Fracture", "Support Devices")
TEST_LIST: Final = "test_list.txt"


def map_findings(findings: frozenset[str]) -> tuple[tuple[float, ...], float]:
    """NIH findings of one image -> (raw labels in ``LABELS`` order, abnormal 1/0)."""
    values: dict[str, float] = dict.fromkeys(LABELS, math.nan)
    if findings == {"No Finding"}:
        values.update(dict.fromkeys(LABELS, 0.0))
        values[NO_FINDING] = 1.0
        values["Support Devices"] = math.nan  # NIH never labels devices, not even on normal films
        return tuple(values[label] for label in LABELS), 0.0
    values[NO_FINDING] = 0.0
    for column in set(DIRECT.values()):
        values[column] = 0.0
    for finding in findings & DIRECT.keys():
        values[DIRECT[finding]] = 1.0
    if "Infiltration" in findings:
        values["Lung Opacity"] = 1.0
    else:
        values["Lung Opacity"] = math.nan if findings & OPACITY_LIKE else 0.0
    return tuple(values[label] for label in LABELS), 1.0


@dataclass(frozen=True)
class NIHSource:
    root: Path
    source_name: str = "NIH-ChestXray14"

    @property
    def name(self) -> str:
        return self.source_name

    def label_file(self) -> Path:
        for name in LABEL_FILES:
            if (self.root / name).is_file():
                return self.root / name
        raise DataError(f"no {' or '.join(LABEL_FILES)} in {self.root}")

    def examples(self) -> list[Example]:
        csv_path = self.label_file()
        with csv_path.open(newline="", encoding="utf-8") as handle:
            columns = next(csv.reader(handle), [])
        require_columns(csv_path, columns, ["Image Index", "Finding Labels", "Patient ID"])
        images = self._image_index()
        test_images = self._test_list()
        examples: list[Example] = []
        problems: list[BadRow] = []
        for line, row in read_csv_rows(csv_path):
            where = f"{csv_path.name} line {line}"
            name = (row.get("Image Index") or "").strip()
            findings = frozenset(f.strip() for f in (row.get("Finding Labels") or "").split("|") if f.strip())
            unknown = sorted(findings - NIH_FINDINGS)
            if not name or not findings or unknown or ("No Finding" in findings and len(findings) > 1):
                problem = (
                    f"unknown finding(s) {unknown}"
                    if unknown
                    else "Finding Labels is empty or mixes 'No Finding' with findings"
                )
                problems.append(bad(where, name or "<empty>", problem))
                continue
            try:
                patient = f"nih_{int((row.get('Patient ID') or '').strip()):08d}"
            except ValueError:
                problems.append(bad(where, name, f"Patient ID {row.get('Patient ID')!r} is not a number"))
                continue
            labels, abnormal = map_findings(findings)
            examples.append(
                Example(
                    path=images.get(name, self.root / "images" / name),
                    rel_path=name,
                    labels=labels,
                    patient_id=patient,
                    source=self.source_name,
                    where=where,
                    frontal=True,  # ChestX-ray14 holds frontal (PA/AP) views only
                    abnormal=abnormal,
                    split=("test" if name in test_images else "train") if test_images else None,
                    **demographics(  # type: ignore[arg-type]
                        row.get("Patient Gender"), row.get("Patient Age"), row.get("View Position")
                    ),
                )
            )
        if problems:
            raise BadRowsError(problems)
        return examples

    def _image_index(self) -> dict[str, Path]:
        folders = [self.root / "images", *sorted(self.root.glob("images_*/images"))]
        return {p.name: p for folder in folders if folder.is_dir() for p in folder.iterdir()}

    def _test_list(self) -> frozenset[str]:
        path = self.root / TEST_LIST
        return frozenset(path.read_text().split()) if path.is_file() else frozenset()
