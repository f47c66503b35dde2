"""``produce --watch DIR``: publish what a PACS (or anyone) exports into a folder, once each file is whole.

A file is taken when its size and modification time have not changed for ``settle_s`` (writers that use a
temporary name, dot-files and ``.tmp`` / ``.part`` files are skipped until renamed). A file that is stable
but still unreadable may be a writer that paused: it is retried until it has been stable for ``give_up_s``,
and only then dead-lettered. Taken images go through the gateway's study buffer, so the images of one study
are published together once the study is quiet, and a file is never taken twice (a ledger in the state
folder remembers each one by path, size and modification time; it is local state, never logged).
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from cxr_triage.image_store import ImageStore
from cxr_triage.imaging import ImageRejected
from cxr_triage.ingest.pseudonym import Pseudonymiser
from cxr_triage.ingest.publisher import EventPublisher
from cxr_triage.ingest.service import refused
from cxr_triage.ingest.validate import SUFFIX_FOR, images_in, prepare_bytes, sha256_of
from producers.metrics import ProducerMetrics
from producers.study_buffer import StudyBuffer, publish_complete
from producers.traffic import TokenBucket

logger = logging.getLogger(__name__)

SOURCE: Final = "watch"


def state_path(home: Path, folder: Path) -> Path:
    """One state file per watched folder (named by a hash of its path, which may name a patient)."""
    digest = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:16]
    return home / "watch" / f"{digest}.sqlite3"


class Ledger:
    """Files already taken (stored or refused), by relative path, size and modification time."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS taken (path TEXT, size INTEGER, mtime_ns INTEGER, outcome TEXT, "
            "PRIMARY KEY (path, size, mtime_ns))"
        )
        self._lock = threading.Lock()

    def has(self, path: str, size: int, mtime_ns: int) -> bool:
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM taken WHERE path = ? AND size = ? AND mtime_ns = ?", (path, size, mtime_ns)
            ).fetchone()
        return row is not None

    def add(self, path: str, size: int, mtime_ns: int, outcome: str) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO taken VALUES (?, ?, ?, ?)", (path, size, mtime_ns, outcome)
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()


@dataclass
class _Seen:
    size: int
    mtime_ns: int
    stable_since: float


@dataclass
class FolderWatcher:
    folder: Path
    store: ImageStore
    publisher: EventPublisher
    buffer: StudyBuffer
    ledger: Ledger
    pseudonyms: Pseudonymiser
    bucket: TokenBucket
    settle_s: float = 2.0
    give_up_s: float = 60.0
    quiet_s: float = 10.0
    metrics: ProducerMetrics = field(default_factory=ProducerMetrics)
    _seen: dict[str, _Seen] = field(default_factory=dict)

    def candidates(self) -> Iterator[Path]:
        # Image names only: a copy in progress under a temporary name (x.dcm.part, .tmp, ...) is not one.
        return images_in(self.folder)

    def scan(self, now: float) -> int:
        """Take every file that has been stable for ``settle_s``; return how many were taken."""
        taken = 0
        present = set()
        for path in self.candidates():
            key = str(path.relative_to(self.folder))
            present.add(key)
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            if self.ledger.has(key, st.st_size, st.st_mtime_ns):
                continue
            seen = self._seen.get(key)
            if seen is None or (seen.size, seen.mtime_ns) != (st.st_size, st.st_mtime_ns):
                self._seen[key] = _Seen(st.st_size, st.st_mtime_ns, now)
                continue
            if now - seen.stable_since < self.settle_s:
                continue
            if self._take(path, key, st.st_size, st.st_mtime_ns, stable_for=now - seen.stable_since):
                self._seen.pop(key, None)
                taken += 1
        for gone in set(self._seen) - present:
            del self._seen[gone]
        return taken

    def _take(self, path: Path, key: str, size: int, mtime_ns: int, *, stable_for: float) -> bool:
        try:
            data = path.read_bytes()
        except OSError:
            return False  # moved away or unreadable for now: looked at again on the next scan
        try:
            prepared = prepare_bytes(data, self.pseudonyms)
        except ImageRejected as exc:
            if exc.kind == "unreadable" and stable_for < self.give_up_s:
                return False  # perhaps a writer that paused: wait until it has been still for give_up_s
            self._refuse(exc, sha256_of(data) if data else None)
            self.ledger.add(key, size, mtime_ns, "rejected")
            self.metrics.files.labels("rejected").inc()
            self.metrics.rejected.labels(exc.kind).inc()
            return True
        uri = self.store.put(prepared.data, suffix=SUFFIX_FOR[prepared.content_type])
        self.buffer.add(prepared.study_id, prepared.image(uri), prepared.pseudonyms)
        if prepared.content_type != "application/dicom":
            self.buffer.close([prepared.study_id])  # a PNG or JPEG is a study of its own
        self.ledger.add(key, size, mtime_ns, "stored")
        self.metrics.files.labels("stored").inc()
        return True

    def _refuse(self, exc: ImageRejected, sha256: str | None) -> None:
        refused(exc.reason, sha256=sha256, publisher=self.publisher, source=SOURCE, kind=exc.kind)

    def publish_due(self) -> int:
        published = len(publish_complete(self.buffer, self.publisher, quiet_s=self.quiet_s, source=SOURCE,
                                         before_each=self.bucket.take))  # fmt: skip
        self.metrics.studies_published.inc(published)
        return published
