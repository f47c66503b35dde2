"""An in-memory index of the join table, so the 5 s timer never scans (and parses) every study.

It knows which keys hold a waiting verdict (the expiry timer looks at those alone) and which studies are
settled, oldest update first (the pruning pops from the front while they are older than the TTL). It is
derived state: rebuilt by one scan of the table after the changelog recovery, then kept up to date by every
table write.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

from stream_processors import join


class JoinIndex:
    def __init__(self) -> None:
        self.waiting: set[bytes] = set()
        # Settled keys by their state's last update (processing time), oldest first.
        self._settled: OrderedDict[bytes, float] = OrderedDict()
        self.built = False

    def update(self, key: bytes, state: join.JoinState, *, now: float) -> None:
        """Record ``state`` as the key's value (just written, or read by the rebuild)."""
        if state.waiting:
            self.waiting.add(key)
        else:
            self.waiting.discard(key)
        self._settled.pop(key, None)
        if join.settled(state):
            self._settled[key] = state.updated_at if state.updated_at is not None else now

    def forget(self, key: bytes) -> None:
        self.waiting.discard(key)
        self._settled.pop(key, None)

    def rebuild(self, items: Iterable[tuple[bytes, join.JoinState]], *, now: float) -> None:
        """The index of a whole table (after recovery); a state without ``updated_at`` counts as new now."""
        self.waiting.clear()
        self._settled.clear()
        ordered = sorted(
            items, key=lambda item: item[1].updated_at if item[1].updated_at is not None else now
        )
        for key, state in ordered:
            self.update(key, state, now=now)
        self.built = True

    def settled_before(self, cutoff: float) -> list[bytes]:
        """Settled keys last updated before ``cutoff``: the front of the order, nothing after it read."""
        due: list[bytes] = []
        for key, updated in self._settled.items():
            if updated >= cutoff:
                break
            due.append(key)
        return due

    def __len__(self) -> int:
        return len(self._settled)
