"""Errors of the trainer: each names what to fix (the file, the row, the column), never a patient."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class TrainerError(Exception):
    """Base class: caught once at the CLI and shown as a message, not a traceback."""


class DataError(TrainerError, ValueError):
    """The data cannot be used as given (missing columns, no rows, bad rows)."""


@dataclass(frozen=True)
class BadRow:
    """One unusable row: where it is (``labels.csv row 17``) and what is wrong with it."""

    where: str
    path: str
    problem: str

    def __str__(self) -> str:
        return f"{self.where} ({self.path}): {self.problem}"


class BadRowsError(DataError):
    """Rows that would fail mid-epoch, found before training starts; the message lists the first few."""

    SHOWN = 10

    def __init__(self, rows: Sequence[BadRow]) -> None:
        self.rows = tuple(rows)
        shown = "\n  ".join(str(row) for row in self.rows[: self.SHOWN])
        more = f"\n  ... and {len(self.rows) - self.SHOWN} more" if len(self.rows) > self.SHOWN else ""
        super().__init__(f"{len(self.rows)} bad row(s):\n  {shown}{more}")


class RegistryError(TrainerError):
    """The model registry does not hold what a command needs (no challenger, no previous champion)."""


class TrackingUnavailable(TrainerError):
    """The MLflow tracking server does not answer."""


class ServingError(TrainerError):
    """A model cannot be served as it is (input size differs from the serving configuration)."""
