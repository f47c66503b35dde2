"""Kafka topic names: the only contract between services besides Redis keys and HTTP."""

from typing import Final

STUDIES: Final[str] = "cxr.studies.v1"
PREDICTIONS: Final[str] = "cxr.predictions.v1"
VERDICTS: Final[str] = "cxr.verdicts.v1"
DLQ: Final[str] = "cxr.dlq.v1"
AUDIT: Final[str] = "cxr.audit.v1"

ALL: Final[tuple[str, ...]] = (STUDIES, PREDICTIONS, VERDICTS, DLQ, AUDIT)
