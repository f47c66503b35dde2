"""The producer's flow: files -> image store -> ``cxr.studies.v1`` (rejections -> ``cxr.dlq.v1``)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cxr_triage import topics
from cxr_triage.events import DeadLetterEventV1, StudyEventV1, utcnow
from cxr_triage.image_store import ImageStore
from cxr_triage.ingest.publisher import EventPublisher
from cxr_triage.ingest.validate import SUFFIX_FOR, PreparedStudy, Rejection, iter_candidate_files, prepare

log = logging.getLogger(__name__)


@dataclass
class ProduceSummary:
    published: list[dict[str, str]] = field(default_factory=list)
    rejected: list[dict[str, str]] = field(default_factory=list)

    def as_json(self) -> dict[str, object]:
        return {
            "n_published": len(self.published),
            "n_rejected": len(self.rejected),
            "published": self.published,
            "rejected": self.rejected,
        }


def publish_study(
    *, study: PreparedStudy, store: ImageStore, publisher: EventPublisher, source: str
) -> StudyEventV1:
    uri = store.put(study.data, suffix=SUFFIX_FOR[study.content_type])
    event = StudyEventV1(
        study_id=study.study_id,
        image_uri=uri,
        sha256=study.sha256,
        content_type=study.content_type,
        size_bytes=len(study.data),
        received_at=utcnow(),
        source=source,
    )
    publisher.publish(topics.STUDIES, study.study_id, event)
    return event


def reject(*, rejection: Rejection, publisher: EventPublisher) -> None:
    publisher.dead_letter(
        DeadLetterEventV1(
            stage="producer", reason=rejection.reason, error_type="ImageRejected", sha256=rejection.sha256
        )
    )
    # The hash, not the file name: names of exported studies often carry the patient's name.
    log.warning("study rejected", extra={"sha256": rejection.sha256, "reason": rejection.reason})


def produce_paths(
    *, paths: Iterable[Path], store: ImageStore, publisher: EventPublisher, source: str
) -> ProduceSummary:
    summary = ProduceSummary()
    for path in iter_candidate_files(paths):
        outcome = prepare(path)
        if isinstance(outcome, Rejection):
            reject(rejection=outcome, publisher=publisher)
            summary.rejected.append({"path": str(path), "reason": outcome.reason})
        else:
            publish_study(study=outcome, store=store, publisher=publisher, source=source)
            summary.published.append({"path": str(path), "study_id": outcome.study_id})
    publisher.flush()
    log.info(
        "produce finished", extra={"published": len(summary.published), "rejected": len(summary.rejected)}
    )
    return summary
