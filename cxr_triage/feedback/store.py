"""Feedback examples persisted in SQLite: one row per (study, radiologist), replay-safe, ordered by ``seq``.

Why SQLite: the store must upsert (an amendment replaces that radiologist's earlier example, and a replay of
the topics must not add a row), answer "since" queries cheaply, and survive a crash without a server to run;
Parquet files would need a compaction job for the first two. One writer (the stream processors' feedback
sink); any number of readers (the trainer, ``cxr-triage feedback stats``) thanks to WAL mode.

``seq`` is a monotonically increasing arrival number (SQLite AUTOINCREMENT never reuses one): a data window
is a ``seq`` range, and an amended example gets a new ``seq``, so it counts as new data. "Since model version
X" means every example stored since the first one scored by X, whichever version scored the later ones.

Online evaluation: ``example_scores`` indexes which model versions scored each example, in which role
(the serving prediction, or a shadow one in the event's ``shadow``) and arm, so the champion and a challenger
are compared on the examples both scored (paired) without reading every row. A shadow prediction joined after
its example was stored is merged into that row (same verdict id, same ``seq``: the training data is unchanged).

The store also keeps the processors' small state documents (``state``): unmatched verdicts waiting, the last
drift scores, the training request outstanding; the CLI reads them without asking a running processor.

Rows hold the ``FeedbackEventV1`` JSON: an image URI and hash, never a note or a patient identifier.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cxr_triage.events import FeedbackEventV1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS examples (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    study_id TEXT NOT NULL,
    radiologist TEXT NOT NULL,
    verdict_id TEXT NOT NULL,
    decided_at TEXT NOT NULL,
    model_version TEXT NOT NULL,
    event TEXT NOT NULL,
    stored_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    UNIQUE (study_id, radiologist)
);
CREATE INDEX IF NOT EXISTS examples_by_version ON examples (model_version, seq);
CREATE TABLE IF NOT EXISTS example_scores (
    study_id TEXT NOT NULL,
    radiologist TEXT NOT NULL,
    model_version TEXT NOT NULL,
    role TEXT NOT NULL,
    arm TEXT NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (study_id, radiologist, model_version)
);
CREATE INDEX IF NOT EXISTS example_scores_by_version ON example_scores (model_version, role, arm, seq);
CREATE TABLE IF NOT EXISTS state (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


class FeedbackStoreUnavailable(Exception):
    """The store cannot be read: missing, not a file, or not a SQLite feedback store (the message says)."""


@dataclass(frozen=True)
class StoredExample:
    seq: int
    event: FeedbackEventV1


class FeedbackStore:
    """A connection per call: safe from threads and processes, and nothing left open between calls."""

    def __init__(self, path: Path, *, timeout_s: float = 30.0, _read_only: bool = False) -> None:
        self.path = path
        self._timeout_s = timeout_s
        self.read_only = _read_only
        if _read_only:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            had_scores = db.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'example_scores'"
            ).fetchone()
            db.executescript(_SCHEMA)
            if had_scores is None:
                # A store from before online evaluation: every example there was the champion's serving one.
                db.execute(
                    "INSERT OR IGNORE INTO example_scores"
                    " SELECT study_id, radiologist, model_version, 'serving', 'champion', seq FROM examples"
                )

    @classmethod
    def open_existing(cls, path: Path, *, timeout_s: float = 30.0) -> FeedbackStore:
        """A read-only handle on a store that must exist already (readers: ``feedback stats``, the trainer).

        Never creates a file (a wrong path must not read as an empty store) and never writes; raises
        ``FeedbackStoreUnavailable`` naming the cause when ``path`` is missing, not a file, or not a store.
        """
        if not path.exists():
            raise FeedbackStoreUnavailable(f"no feedback store at {path}")
        if not path.is_file():
            raise FeedbackStoreUnavailable(f"the feedback store path {path} is not a file")
        store = cls(path, timeout_s=timeout_s, _read_only=True)
        try:
            with store._connect() as db:
                tables = {
                    name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
                }
        except sqlite3.DatabaseError as exc:
            raise FeedbackStoreUnavailable(f"{path} is not a readable SQLite database: {exc}") from exc
        if not {"examples", "state"} <= tables:
            raise FeedbackStoreUnavailable(f"{path} is a SQLite database but not a feedback store")
        return store

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        if self.read_only:
            # mode=ro: SQLite never creates the file nor writes to it (a WAL reader may still add -shm).
            target, uri = f"{self.path.resolve().as_uri()}?mode=ro", True
        else:
            target, uri = str(self.path), False
        with closing(sqlite3.connect(target, timeout=self._timeout_s, uri=uri)) as db:
            if not self.read_only:
                db.execute("PRAGMA synchronous=FULL")  # an acknowledged example survives a power cut
            with db:  # one transaction: committed on success, rolled back on error
                yield db

    def upsert(self, event: FeedbackEventV1) -> bool:
        """Store ``event``; True if the store changed.

        The same verdict again (a replay) changes nothing; a verdict decided before the stored one (an old
        record replayed after an amendment) is ignored; a newer one replaces the row under a new ``seq``.
        """
        with self._connect() as db:
            row = db.execute(
                "SELECT verdict_id, decided_at FROM examples WHERE study_id = ? AND radiologist = ?",
                (event.study_id, event.radiologist),
            ).fetchone()
            if row is not None:
                verdict_id, decided_at = row
                if verdict_id == event.verdict_id:
                    return self._merge_shadow(db, event)
                if datetime.fromisoformat(decided_at) > event.decided_at:
                    return False
                for table in ("examples", "example_scores"):
                    db.execute(
                        f"DELETE FROM {table} WHERE study_id = ? AND radiologist = ?",
                        (event.study_id, event.radiologist),
                    )
            cursor = db.execute(
                "INSERT INTO examples (study_id, radiologist, verdict_id, decided_at, model_version, event)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    event.study_id,
                    event.radiologist,
                    event.verdict_id,
                    event.decided_at.isoformat(),
                    event.model_version,
                    event.model_dump_json(),
                ),
            )
            seq = int(cursor.lastrowid or 0)
            self._index_scores(db, event, seq, event.model_version, "serving", event.arm)
            for version, shadow in event.shadow.items():
                self._index_scores(db, event, seq, version, "shadow", shadow.arm)
            return True

    @staticmethod
    def _index_scores(
        db: sqlite3.Connection, event: FeedbackEventV1, seq: int, version: str, role: str, arm: str
    ) -> None:
        db.execute(
            "INSERT OR REPLACE INTO example_scores (study_id, radiologist, model_version, role, arm, seq)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (event.study_id, event.radiologist, version, role, arm, seq),
        )

    def _merge_shadow(self, db: sqlite3.Connection, event: FeedbackEventV1) -> bool:
        """The stored example with ``event``'s newer shadow predictions added; True if any was new."""
        seq, raw = db.execute(
            "SELECT seq, event FROM examples WHERE study_id = ? AND radiologist = ?",
            (event.study_id, event.radiologist),
        ).fetchone()
        stored = FeedbackEventV1.model_validate_json(raw)
        added = {
            version: shadow
            for version, shadow in event.shadow.items()
            if version not in stored.shadow or shadow.scored_at > stored.shadow[version].scored_at
        }
        if not added:
            return False
        merged = stored.model_copy(update={"shadow": dict(sorted({**stored.shadow, **added}.items()))})
        db.execute("UPDATE examples SET event = ? WHERE seq = ?", (merged.model_dump_json(), seq))
        for version, shadow in added.items():
            self._index_scores(db, event, int(seq), version, "shadow", shadow.arm)
        return True

    def scored_by_all(self, versions: tuple[str, ...], *, after_seq: int = 0) -> list[StoredExample]:
        """Examples that every one of ``versions`` scored (serving or shadow), oldest first: the paired set."""
        if not versions:
            return []
        marks = ", ".join("?" for _ in versions)
        with self._connect() as db:
            rows = db.execute(
                "SELECT e.seq, e.event FROM examples e WHERE e.seq > ? AND e.seq IN ("
                " SELECT seq FROM example_scores WHERE model_version IN ("
                + marks
                + ") GROUP BY seq HAVING count(DISTINCT model_version) = ?) ORDER BY e.seq",
                (after_seq, *versions, len(versions)),
            ).fetchall()
        return [StoredExample(int(seq), FeedbackEventV1.model_validate_json(raw)) for seq, raw in rows]

    def served_on_arm(self, arm: str, *, after_seq: int = 0) -> list[StoredExample]:
        """Examples whose serving prediction was on ``arm`` ("champion" / "canary"), oldest first."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT e.seq, e.event FROM examples e JOIN example_scores s ON s.seq = e.seq"
                " WHERE s.role = 'serving' AND s.arm = ? AND e.seq > ? ORDER BY e.seq",
                (arm, after_seq),
            ).fetchall()
        return [StoredExample(int(seq), FeedbackEventV1.model_validate_json(raw)) for seq, raw in rows]

    def score_roles(self) -> dict[tuple[str, str, str], tuple[int, int, int]]:
        """Per (model version, role, arm): (examples, oldest ``seq``, newest ``seq``)."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT model_version, role, arm, count(*), min(seq), max(seq) FROM example_scores"
                " GROUP BY model_version, role, arm"
            ).fetchall()
        return {(str(v), str(r), str(a)): (int(n), int(lo), int(hi)) for v, r, a, n, lo, hi in rows}

    def count(self, *, after_seq: int = 0, up_to_seq: int | None = None) -> int:
        """Examples with ``after_seq < seq <= up_to_seq`` (no upper bound when None)."""
        upper = up_to_seq if up_to_seq is not None else 2**62
        with self._connect() as db:
            (n,) = db.execute(
                "SELECT count(*) FROM examples WHERE seq > ? AND seq <= ?", (after_seq, upper)
            ).fetchone()
        return int(n)

    def counts_by_model_version(self) -> dict[str, int]:
        with self._connect() as db:
            rows = db.execute(
                "SELECT model_version, count(*) FROM examples GROUP BY model_version ORDER BY model_version"
            ).fetchall()
        return {str(version): int(n) for version, n in rows}

    def version_signatures(self) -> dict[str, tuple[int, int]]:
        """Per model version: (examples, newest ``seq``); a version whose pair is unchanged has no new row."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT model_version, count(*), max(seq) FROM examples GROUP BY model_version"
                " ORDER BY model_version"
            ).fetchall()
        return {str(version): (int(n), int(seq)) for version, n, seq in rows}

    def max_seq(self) -> int:
        """The newest example's ``seq`` (0 when empty): the upper end of a data window taken now."""
        with self._connect() as db:
            (seq,) = db.execute("SELECT coalesce(max(seq), 0) FROM examples").fetchone()
        return int(seq)

    def examples(self, *, after_seq: int = 0, up_to_seq: int | None = None) -> list[StoredExample]:
        """Examples with ``after_seq < seq <= up_to_seq``, oldest first."""
        upper = up_to_seq if up_to_seq is not None else 2**62
        with self._connect() as db:
            rows = db.execute(
                "SELECT seq, event FROM examples WHERE seq > ? AND seq <= ? ORDER BY seq", (after_seq, upper)
            ).fetchall()
        return [StoredExample(int(seq), FeedbackEventV1.model_validate_json(raw)) for seq, raw in rows]

    def scored_by(self, model_version: str, *, last: int | None = None) -> list[StoredExample]:
        """Examples whose prediction came from ``model_version`` (the newest ``last`` of them), oldest first."""
        query = "SELECT seq, event FROM examples WHERE model_version = ? ORDER BY seq DESC"
        params: tuple[Any, ...] = (model_version,)
        if last is not None:
            query += " LIMIT ?"
            params = (model_version, last)
        with self._connect() as db:
            rows = db.execute(query, params).fetchall()
        return [
            StoredExample(int(seq), FeedbackEventV1.model_validate_json(raw)) for seq, raw in reversed(rows)
        ]

    def since_model_version(self, model_version: str) -> list[StoredExample]:
        """Every example stored since the first one scored by ``model_version`` (empty if none was)."""
        with self._connect() as db:
            (first,) = db.execute(
                "SELECT min(seq) FROM examples WHERE model_version = ?", (model_version,)
            ).fetchone()
        return [] if first is None else self.examples(after_seq=int(first) - 1)

    def count_since_model_version(self, model_version: str) -> int:
        """How many examples ``since_model_version`` would return, counted in SQL."""
        with self._connect() as db:
            (n,) = db.execute(
                "SELECT count(*) FROM examples"
                " WHERE seq >= (SELECT min(seq) FROM examples WHERE model_version = ?)",
                (model_version,),
            ).fetchone()
        return int(n)

    def put_state(self, name: str, value: dict[str, Any]) -> None:
        with self._connect() as db:
            db.execute(
                "INSERT INTO state (name, value) VALUES (?, ?)"
                " ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                (name, json.dumps(value, default=str, sort_keys=True)),
            )

    def get_state(self, name: str) -> dict[str, Any] | None:
        with self._connect() as db:
            row = db.execute("SELECT value FROM state WHERE name = ?", (name,)).fetchone()
        return None if row is None else dict(json.loads(row[0]))
