"""``cxr-triage produce PATH...``: files and folders -> image store -> study buffer -> one event per study.

The same path as the DICOM gateway and the folder watcher: each file is checked and pseudonymised
(``prepare``), stored, and kept in the study buffer; when every file was read, the studies they belong to are
published whole, with any image of theirs produced earlier (a late image republishes its study with the
images before it). A file given again is published again. Output and logs name files by content hash only:
file names of exported studies often carry the patient's name.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cxr_triage.image_store import ImageStore
from cxr_triage.ingest.pseudonym import Pseudonymiser
from cxr_triage.ingest.publisher import DeliveryFailed, EventPublisher
from cxr_triage.ingest.service import reject
from cxr_triage.ingest.validate import SUFFIX_FOR, Rejection, iter_candidate_files, prepare
from producers.study_buffer import StudyBuffer, publish_complete

logger = logging.getLogger(__name__)


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


def produce_paths(
    *,
    paths: Iterable[Path],
    store: ImageStore,
    publisher: EventPublisher,
    pseudonyms: Pseudonymiser,
    buffer: StudyBuffer,
    source: str,
    quiet_s: float,
    before_each: Callable[[], None] | None = None,
    after_file: Callable[[], None] | None = None,
) -> ProduceSummary:
    """Publish the studies of ``paths``; ``DeliveryFailed`` if Kafka does not confirm them (they stay due).

    Studies a run before this one left unpublished (a crash, Kafka down) and quiet for ``quiet_s`` go too.
    ``after_file`` is called once per file read (a progress bar).
    """
    summary = ProduceSummary()
    studies: set[str] = set()
    for path in iter_candidate_files(paths):
        outcome = prepare(path, pseudonyms)
        if after_file is not None:
            after_file()
        if isinstance(outcome, Rejection):
            reject(rejection=outcome, publisher=publisher, source=source)
            summary.rejected.append({"sha256": outcome.sha256, "reason": outcome.reason})
            continue
        # Stored at once: a folder of DICOM files is never all in memory.
        uri = store.put(outcome.data, suffix=SUFFIX_FOR[outcome.content_type])
        buffer.add(outcome.study_id, outcome.image(uri), outcome.pseudonyms, again=True)
        studies.add(outcome.study_id)
        summary.published.append(
            {
                "sha256": outcome.sha256,
                "study_id": outcome.study_id,
                "image_id": outcome.image_id,
                "view": outcome.view,
            }
        )
    buffer.close(studies)  # every file was read: the studies are complete as far as this run knows
    due = publish_complete(buffer, publisher, quiet_s=quiet_s, source=source, before_each=before_each)
    if studies - {study.event.study_id for study in due}:
        raise DeliveryFailed("the studies were not acknowledged; they stay in the buffer for the next run")
    summary.studies = len(due)
    logger.info(
        "produce finished",
        extra={
            "studies": summary.studies,
            "images": len(summary.published),
            "rejected": len(summary.rejected),
        },
    )
    return summary
