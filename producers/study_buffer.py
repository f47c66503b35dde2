"""Images received but not yet published, kept on disk until their study is complete and Kafka has it.

The DICOM gateway, the folder watcher and ``produce`` take an image as received only once it is in the
image store and in this buffer (SQLite, synchronous commits), so a crash between the acknowledgement and the
publication loses nothing: the next start publishes what is pending. A study is due when no image of it arrived for the quiet
time, or when its sender said it is done (the association ended). Published studies are remembered for a
while, so that a late image republishes its study whole, with the images published before.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cxr_triage import topics
from cxr_triage.events import StudyEventV1, StudyImageV1, StudyPseudonyms, utcnow
from cxr_triage.ingest.publisher import DeliveryFailed, EventPublisher

logger = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS studies (
    study_id TEXT PRIMARY KEY,
    fields TEXT NOT NULL,            -- the study's pseudonyms (StudyPseudonyms as JSON)
    first_received TEXT NOT NULL,    -- ISO time of the study's first image: its age on the worklist
    last_received TEXT NOT NULL,
    closed INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS images (
    study_id TEXT NOT NULL,
    image_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    image TEXT NOT NULL,             -- StudyImageV1 as JSON
    published INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (study_id, image_id)
);
"""


@dataclass(frozen=True)
class DueStudy:
    event: StudyEventV1
    new_image_ids: tuple[str, ...]


class StudyBuffer:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # an acknowledged image survives a power cut
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()

    def add(
        self,
        study_id: str,
        image: StudyImageV1,
        pseudonyms: StudyPseudonyms,
        at: datetime | None = None,
        *,
        again: bool = False,
    ) -> bool:
        """Keep ``image`` for ``study_id``; False if the study already has it (a resend: nothing changes).

        ``again``: a known image is published again with its study (``produce`` of a file given twice: the
        user asked for it; a DICOM sender's resend is only acknowledged).
        """
        now = (at or utcnow()).isoformat()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                known = self._db.execute(
                    "SELECT 1 FROM images WHERE study_id = ? AND image_id = ?", (study_id, image.image_id)
                ).fetchone()
                if known is None:
                    seq = self._db.execute(
                        "SELECT COALESCE(MAX(seq), 0) + 1 FROM images WHERE study_id = ?", (study_id,)
                    ).fetchone()[0]
                    self._db.execute(
                        "INSERT INTO images (study_id, image_id, seq, image) VALUES (?, ?, ?, ?)",
                        (study_id, image.image_id, seq, image.model_dump_json()),
                    )
                    self._db.execute(
                        "INSERT INTO studies (study_id, fields, first_received, last_received) "
                        "VALUES (?, ?, ?, ?) ON CONFLICT (study_id) DO UPDATE "
                        "SET last_received = excluded.last_received, closed = 0",
                        (study_id, pseudonyms.model_dump_json(), now, now),
                    )
                elif again:
                    self._db.execute(
                        "UPDATE images SET published = 0 WHERE study_id = ? AND image_id = ?",
                        (study_id, image.image_id),
                    )
                    self._db.execute(
                        "UPDATE studies SET last_received = ?, closed = 0 WHERE study_id = ?", (now, study_id)
                    )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return known is None

    def close(self, study_ids: Iterable[str]) -> None:
        """The sender is done with these studies: publish them without waiting for the quiet time."""
        with self._lock:
            self._db.executemany(
                "UPDATE studies SET closed = 1 WHERE study_id = ?", [(s,) for s in study_ids]
            )

    def due(self, *, quiet_s: float, source: str, now: datetime | None = None) -> list[DueStudy]:
        """Studies with unpublished images that are complete: closed, or quiet for ``quiet_s``."""
        cutoff = ((now or utcnow()) - timedelta(seconds=quiet_s)).isoformat()
        with self._lock:
            rows = self._db.execute(
                "SELECT s.study_id, s.fields, s.first_received FROM studies s "
                "WHERE (s.closed = 1 OR s.last_received <= ?) "
                "AND EXISTS (SELECT 1 FROM images i WHERE i.study_id = s.study_id AND i.published = 0) "
                "ORDER BY s.first_received",
                (cutoff,),
            ).fetchall()
            due = []
            for study_id, fields, first_received in rows:
                images = self._db.execute(
                    "SELECT image, published FROM images WHERE study_id = ? ORDER BY seq", (study_id,)
                ).fetchall()
                parsed = [StudyImageV1.model_validate_json(text) for text, _ in images]
                event = StudyEventV1.of_images(
                    parsed,
                    study_id=study_id,
                    received_at=datetime.fromisoformat(first_received),
                    source=source,
                    pseudonyms=StudyPseudonyms.model_validate_json(fields),
                )
                new = tuple(
                    image.image_id
                    for image, (_, published) in zip(parsed, images, strict=True)
                    if not published
                )
                due.append(DueStudy(event=event, new_image_ids=new))
        return due

    def mark_published(self, study_id: str, image_ids: Iterable[str]) -> None:
        with self._lock:
            self._db.executemany(
                "UPDATE images SET published = 1 WHERE study_id = ? AND image_id = ?",
                [(study_id, image_id) for image_id in image_ids],
            )
            self._db.execute("UPDATE studies SET closed = 0 WHERE study_id = ?", (study_id,))

    def pending(self) -> int:
        """Studies with an image not yet published."""
        with self._lock:
            row = self._db.execute(
                "SELECT COUNT(DISTINCT study_id) FROM images WHERE published = 0"
            ).fetchone()
        return int(row[0])

    def forget_before(self, before: datetime) -> int:
        """Drop fully published studies whose last image is older than ``before``; a later image starts anew."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                old = [
                    row[0]
                    for row in self._db.execute(
                        "SELECT study_id FROM studies WHERE last_received < ? AND NOT EXISTS "
                        "(SELECT 1 FROM images i WHERE i.study_id = studies.study_id AND i.published = 0)",
                        (before.isoformat(),),
                    )
                ]
                self._db.executemany("DELETE FROM images WHERE study_id = ?", [(s,) for s in old])
                self._db.executemany("DELETE FROM studies WHERE study_id = ?", [(s,) for s in old])
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return len(old)

    def close_db(self) -> None:
        with self._lock:
            self._db.close()


def publish_complete(
    buffer: StudyBuffer,
    publisher: EventPublisher,
    *,
    quiet_s: float,
    source: str,
    before_each: Callable[[], None] | None = None,
) -> list[DueStudy]:
    """Publish every complete study with unpublished images; mark them only once Kafka acknowledged them.

    ``before_each`` runs before each study goes out (a token bucket's ``take``). If Kafka does not confirm,
    nothing is marked and the same studies are published again on the next call (same key, same content).
    """
    due = buffer.due(quiet_s=quiet_s, source=source)
    for study in due:
        if before_each is not None:
            before_each()
        publisher.publish(topics.STUDIES, study.event.study_id, study.event)
    try:
        publisher.flush()
    except DeliveryFailed as exc:
        logger.error("studies not acknowledged by Kafka; retrying", extra={"error": str(exc)})
        return []
    for study in due:
        buffer.mark_published(study.event.study_id, study.new_image_ids)
        logger.info(
            "study published",
            extra={
                "study_id": study.event.study_id,
                "images": len(study.event.images),
                "new": len(study.new_image_ids),
            },
        )
    return due
