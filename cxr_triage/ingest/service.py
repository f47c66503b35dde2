"""Ingest's last steps, shared by every way in: image store -> one event per study on ``cxr.studies.v1``,
refusals -> DLQ.

``publish_images`` publishes the images it is given as their studies at once (an API upload, a benchmark);
the DICOM gateway, the folder watcher and ``cxr-triage produce`` keep images in a study buffer
(``producers.study_buffer``) so that a late image republishes its study whole. Logs name files by content
hash only: file names of exported studies often carry the patient's name.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from cxr_triage import topics
from cxr_triage.events import DeadLetterEventV1, StudyEventV1, StudyImageV1, StudyPseudonyms, utcnow
from cxr_triage.image_store import ImageStore
from cxr_triage.ingest.publisher import EventPublisher
from cxr_triage.ingest.validate import SUFFIX_FOR, PreparedImage, Rejection

log = logging.getLogger(__name__)


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
    refused(rejection.reason, sha256=rejection.sha256, publisher=publisher, source=source)


def refused(
    reason: str, *, sha256: str | None, publisher: EventPublisher, source: str, kind: str | None = None
) -> None:
    """An image refused at ingest: logged and dead-lettered with its reason and content hash, nothing else."""
    log.warning("image refused", extra={"kind": kind, "reason": reason, "sha256": sha256, "source": source})
    publisher.dead_letter(
        DeadLetterEventV1(
            stage="producer", reason=reason, error_type="ImageRejected", sha256=sha256, source=source
        )
    )
