"""Dead letters: the events that name a rejected message and why, for an operator to fix and replay."""

from __future__ import annotations

from typing import Final

from cxr_triage.events import DeadLetterEventV1
from inference_worker.batching import Rejected

# A study event is a few hundred bytes; anything larger is garbage, and the dead letter must stay under
# Kafka's message size limit, so the copy of the original is cut here.
MAX_ORIGINAL_BYTES: Final = 64 * 1024


def dead_letter(rejected: Rejected) -> DeadLetterEventV1:
    record = rejected.record
    original = None
    if record.value is not None:
        original = record.value[:MAX_ORIGINAL_BYTES].decode("utf-8", errors="replace")
        if len(record.value) > MAX_ORIGINAL_BYTES:
            original += f"...[cut: {len(record.value)} bytes in all]"
    return DeadLetterEventV1(
        stage="worker",
        reason=rejected.reason,
        error_type=f"{rejected.reason_class}:{rejected.error_type}",
        study_id=rejected.study_id,
        sha256=rejected.sha256,
        original=original,
        original_topic=record.topic,
        original_partition=record.partition,
        original_offset=record.offset,
    )
