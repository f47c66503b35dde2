"""Which source reads a folder: NIH ChestX-ray14 when it holds ``Data_Entry_2017*.csv``, else CheXpert layout."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from trainer.data.chexpert import CheXpertSource
from trainer.data.nih import LABEL_FILES, NIHSource
from trainer.data.sources import ExampleSource
from trainer.errors import DataError


def open_source(folder: Path) -> ExampleSource:
    if not folder.is_dir():
        raise DataError(f"data folder not found: {folder}")
    if any((folder / name).is_file() for name in LABEL_FILES):
        return NIHSource(folder)
    return CheXpertSource(folder)


def open_sources(folders: Sequence[Path]) -> list[ExampleSource]:
    return [open_source(folder) for folder in folders]
