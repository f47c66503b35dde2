"""Kafka topic names and their retention: the only contract between services besides Redis keys and HTTP.

Studies, predictions and verdicts are the system of record: the Redis worklist is a projection rebuilt from
them (`cxr-triage worklist rebuild`), so they are kept forever and compacted by key, never deleted by age.
Compaction is safe because each key's last record is the whole truth for that key: a study id's study event,
its (latest) prediction, and per (study, radiologist) the latest verdict, which replaces the earlier one.
"""

from typing import Final

STUDIES: Final[str] = "cxr.studies.v1"
PREDICTIONS: Final[str] = "cxr.predictions.v1"
VERDICTS: Final[str] = "cxr.verdicts.v1"
DLQ: Final[str] = "cxr.dlq.v1"
AUDIT: Final[str] = "cxr.audit.v1"
# The feedback loop (stream processors and the retrain worker).
FEEDBACK: Final[str] = "cxr.feedback.v1"
METRICS: Final[str] = "cxr.metrics.v1"
DRIFT: Final[str] = "cxr.drift.v1"
TRAINING_REQUESTS: Final[str] = "cxr.training-requests.v1"
TRAINING_RESULTS: Final[str] = "cxr.training-results.v1"
# Online evaluation of challengers (shadow / canary) and what became of them.
MODEL_DECISIONS: Final[str] = "cxr.model-decisions.v1"

ALL: Final[tuple[str, ...]] = (
    STUDIES,
    PREDICTIONS,
    VERDICTS,
    DLQ,
    AUDIT,
    FEEDBACK,
    METRICS,
    DRIFT,
    TRAINING_REQUESTS,
    TRAINING_RESULTS,
    MODEL_DECISIONS,
)

_FOREVER: Final[dict[str, str]] = {"retention.ms": "-1", "retention.bytes": "-1"}
_COMPACTED: Final[dict[str, str]] = {"cleanup.policy": "compact", **_FOREVER}
_DAYS_30: Final[str] = str(30 * 24 * 3600 * 1000)

# Topic-level configs `cxr-triage up` sets (on creation, and again on existing topics). Audit and training
# history are kept forever (deleting them is a hospital's records decision, not ours); DLQ and the metric and
# drift streams are operational and age out after 30 days.
CONFIGS: Final[dict[str, dict[str, str]]] = {
    STUDIES: _COMPACTED,
    PREDICTIONS: _COMPACTED,
    VERDICTS: _COMPACTED,
    FEEDBACK: _COMPACTED,
    AUDIT: _FOREVER,
    TRAINING_REQUESTS: _FOREVER,
    TRAINING_RESULTS: _FOREVER,
    MODEL_DECISIONS: _FOREVER,
    DLQ: {"retention.ms": _DAYS_30},
    METRICS: {"retention.ms": _DAYS_30},
    DRIFT: {"retention.ms": _DAYS_30},
}

_KEY_SEPARATOR: Final[str] = ":"


def verdict_key(study_id: str, radiologist: str) -> str:
    """Kafka key of a verdict or feedback record: one per (study, radiologist), so compaction keeps the latest.

    Study ids never contain ``:`` (``events.STUDY_ID_PATTERN``), so the first ``:`` splits the key again.
    """
    return f"{study_id}{_KEY_SEPARATOR}{radiologist}"


def split_verdict_key(key: str) -> tuple[str, str]:
    """(study id, radiologist) of a ``verdict_key``; ``ValueError`` if it is not one."""
    study_id, sep, radiologist = key.partition(_KEY_SEPARATOR)
    if not sep or not study_id or not radiologist:
        raise ValueError("not a verdict key (want <study id>:<radiologist>)")
    return study_id, radiologist


def shadow_key(study_id: str, model_version: str) -> str:
    """Kafka key of a shadow prediction: never the study id alone, so compaction keeps the serving one."""
    return f"{study_id}{_KEY_SEPARATOR}shadow{_KEY_SEPARATOR}{model_version}"
