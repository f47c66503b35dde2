"""The rollout worker's record of the decisions it started and finished, by decision id (a JSON file).

A decision is marked ``started`` before the repository changes and ``done`` after MLflow is written, so:

* a decision read again after it was done (a lost commit, a republished event) is a duplicate, skipped;
* a decision read again after a crash in the middle is resumed, not judged stale: by then the worker itself
  may have switched serving or removed the challenger, which would otherwise look like someone else did.

The served version before a promotion is kept with ``started``: a resumed promotion must record what was
served before it, not the version it switched to itself. The file is rewritten whole (write, rename).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, Literal

State = Literal["started", "done"]
# Decisions are a handful per challenger; the bound only keeps a years-old file from growing without end.
MAX_ENTRIES: Final = 1000


@dataclass(frozen=True)
class Entry:
    state: State
    action: str
    challenger_version: str
    previous_served: str | None = None
    outcome: str = ""
    at: str = ""


class DecisionLedger:
    def __init__(self, path: Path) -> None:
        self.path = path

    def _read(self) -> dict[str, Entry]:
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        return {str(k): Entry(**v) for k, v in raw.items()}

    def _write(self, entries: dict[str, Entry]) -> None:
        kept = dict(list(entries.items())[-MAX_ENTRIES:])
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        with os.fdopen(fd, "w") as handle:
            json.dump({k: asdict(v) for k, v in kept.items()}, handle, indent=2, sort_keys=False)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)

    def get(self, decision_id: str) -> Entry | None:
        return self._read().get(decision_id)

    def start(
        self, decision_id: str, *, action: str, challenger_version: str, previous_served: str | None
    ) -> Entry:
        entries = self._read()
        entry = Entry(
            state="started",
            action=action,
            challenger_version=challenger_version,
            previous_served=previous_served,
            at=_now(),
        )
        entries[decision_id] = entry
        self._write(entries)
        return entry

    def finish(self, decision_id: str, outcome: str) -> None:
        entries = self._read()
        started = entries.pop(decision_id)
        entries[decision_id] = Entry(
            state="done",
            action=started.action,
            challenger_version=started.challenger_version,
            previous_served=started.previous_served,
            outcome=outcome,
            at=_now(),
        )
        self._write(entries)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
