"""The producer's flow: images -> image store -> one event per study on ``cxr.studies.v1`` (refusals -> DLQ).

The images of one DICOM study given together (a study folder) become one study event with all of them; a
PNG or JPEG is a study of its own. Output and logs name files by content hash only: file names of exported
studies often carry the patient's name.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cxr_triage import topics
from cxr_triage.events import DeadLetterEventV1, StudyEventV1, StudyImageV1, StudyPseudonyms, utcnow
from cxr_triage.image_store import ImageStore
from cxr_triage.ingest.pseudonym import Pseudonymiser
from cxr_triage.ingest.publisher import EventPublisher
from cxr_triage.ingest.validate import SUFFIX_FOR, PreparedImage, Rejection, iter_candidate_files, prepare

log = logging.getLogger(__name__)


@dataclass
class ProduceSummary:
    published: list[dict[str, str]] = field(default_factory=list)  # one entry per image
    rejected: list[dict[str, str | None]] = field(default_factory=list)
    studies: int = 0

    def as_json(self) -> dict[str, object]:
        return {
            "n_studies": self.studies,
            "n_published": len(self.published),
            "n_rejected": len(self.rejected),
            "published": self.published,
            "rejected": self.rejected,
        }


@dataclass(frozen=True)
class StoredImage:
    """An image in the image store, with its study's pseudonyms: all a study event needs of it."""

    study_id: str
    image: StudyImageV1
    pseudonyms: StudyPseudonyms = field(default_factory=StudyPseudonyms)


def store_image(image: PreparedImage, store: ImageStore) -> StoredImage:
    uri = store.put(image.data, suffix=SUFFIX_FOR[image.content_type])
    return StoredImage(image.study_id, image.image(uri), image.pseudonyms)


def publish_stored(
    stored: Sequence[StoredImage],
    *,
    publisher: EventPublisher,
    source: str,
    before_each: Callable[[], None] | None = None,
) -> list[StudyEventV1]:
    """One event per study, in first-seen order, with each of its images once; flushing is the caller's."""
    studies: dict[str, list[StoredImage]] = {}
    for item in stored:
        images = studies.setdefault(item.study_id, [])
        if all(known.image.image_id != item.image.image_id for known in images):  # a resend counts once
            images.append(item)
    events = []
    for study_id, images in studies.items():
        if before_each is not None:
            before_each()
        first = images[0]
        event = StudyEventV1.of_images(
            [item.image for item in images],
            study_id=study_id,
            received_at=utcnow(),
            source=source,
            pseudonyms=first.pseudonyms,
        )
        publisher.publish(topics.STUDIES, study_id, event)
        events.append(event)
    return events


def publish_images(
    images: Sequence[PreparedImage], *, store: ImageStore, publisher: EventPublisher, source: str
) -> list[StudyEventV1]:
    """Store, then publish (``publish_stored``): an upload, a benchmark's studies."""
    stored = [store_image(image, store) for image in images]
    return publish_stored(stored, publisher=publisher, source=source)


def reject(*, rejection: Rejection, publisher: EventPublisher, source: str) -> None:
    publisher.dead_letter(
        DeadLetterEventV1(
            stage="producer",
            reason=rejection.reason,
            error_type="ImageRejected",
            sha256=rejection.sha256,
            source=source,
        )
    )
    log.warning("study rejected", extra={"sha256": rejection.sha256, "reason": rejection.reason})


def produce_paths(
    *,
    paths: Iterable[Path],
    store: ImageStore,
    publisher: EventPublisher,
    pseudonyms: Pseudonymiser,
    source: str,
    before_each: Callable[[], None] | None = None,
) -> ProduceSummary:
    summary = ProduceSummary()
    stored: list[StoredImage] = []
    for path in iter_candidate_files(paths):
        outcome = prepare(path, pseudonyms)
        if isinstance(outcome, Rejection):
            reject(rejection=outcome, publisher=publisher, source=source)
            summary.rejected.append({"sha256": outcome.sha256, "reason": outcome.reason})
            continue
        stored.append(store_image(outcome, store))  # at once: a folder of DICOM files is never all in memory
        summary.published.append(
            {
                "sha256": outcome.sha256,
                "study_id": outcome.study_id,
                "image_id": outcome.image_id,
                "view": outcome.view,
            }
        )
    summary.studies = len(publish_stored(stored, publisher=publisher, source=source, before_each=before_each))
    publisher.flush()
    log.info(
        "produce finished",
        extra={
            "studies": summary.studies,
            "images": len(summary.published),
            "rejected": len(summary.rejected),
        },
    )
    return summary
