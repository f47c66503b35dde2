"""What the stack knows about one component: how to launch it and how to tell that it is healthy."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path


class SetupError(RuntimeError):
    """A component cannot be prepared (a missing program, a failed download); the message says what to do."""


@dataclass(frozen=True)
class Launch:
    """A prepared command line: ``env`` entries are added to (or override) the stack's environment."""

    argv: list[str]
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: Path | None = None


@dataclass(frozen=True)
class Component:
    """One process of the stack.

    ``prepare`` writes whatever the process needs (configuration, formatted storage, binaries) and returns
    its command line; it runs only when the component is about to start. ``after_healthy`` runs on every
    ``up`` once the component answers (Kafka creates its topics there). ``host`` is where a client on this
    machine reaches ``port`` and ``ports`` (checked for strangers before a start). Components of one
    ``stage`` start together; a stage starts once every component of the stages before it is healthy.
    """

    name: str
    port: int
    ports: tuple[int, ...]
    prepare: Callable[[], Launch]
    probe: Callable[[], bool]
    start_timeout_s: float
    after_healthy: Callable[[], None] | None = None
    host: str = "127.0.0.1"
    stage: int = 0
    # What else a client needs to reach it, for ``status --json`` (the gateway's AE title).
    details: Mapping[str, str] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        """``worker-3`` -> ``worker``: the name ``--only`` selects by."""
        return self.name.split("-", 1)[0]
