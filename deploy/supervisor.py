"""Foreground `up`: keep the components running, restart the ones that die (with backoff), stop on a signal."""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType

from deploy.procs import is_alive
from deploy.spec import Component
from deploy.stack import (
    SUPERVISOR,
    Cancelled,
    Stack,
    StackError,
    StartResult,
    down,
    record_self,
    stack_lock,
    start_component,
    supervisor_pid,
    up,
)

logger = logging.getLogger(__name__)

CHECK_INTERVAL_S = 1.0
BACKOFF_MAX_S = 60.0
STABLE_AFTER_S = 60.0  # a component that has run this long is forgiven its earlier crashes


@dataclass
class _Restarts:
    failures: int = 0
    next_try: float = 0.0
    up_since: float = 0.0

    def delay(self) -> float:
        return float(min(BACKOFF_MAX_S, 2 ** max(0, self.failures - 1)))


class Supervisor:
    def __init__(self, stack: Stack, components: list[Component]) -> None:
        self.stack = stack
        self.components = components
        self.stopping = False
        self._restarts = {c.name: _Restarts(up_since=time.monotonic()) for c in components}

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        logger.info("signal received, stopping the stack", extra={"signal": signal.Signals(signum).name})
        self.stopping = True

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, self._on_signal)

    def cancelled(self) -> bool:
        return self.stopping

    def check_once(self) -> None:
        """Restart each component whose process is gone, once its backoff has passed."""
        now = time.monotonic()
        for component in self.components:
            if self.stopping:
                return
            restarts = self._restarts[component.name]
            record = self.stack.pid_file(component.name).read()
            if record is not None and is_alive(record):
                if restarts.failures and now - restarts.up_since > STABLE_AFTER_S:
                    restarts.failures = 0
                continue
            if now < restarts.next_try:
                continue
            restarts.failures += 1
            logger.warning(
                "component is not running, restarting",
                extra={"component": component.name, "attempt": restarts.failures},
            )
            try:
                with stack_lock(self.stack.settings):
                    start_component(self.stack, component, self.cancelled)
                restarts.up_since = time.monotonic()
                logger.info("restarted", extra={"component": component.name})
            except Cancelled:
                return
            except StackError as exc:
                restarts.next_try = time.monotonic() + restarts.delay()
                logger.error(
                    "restart failed",
                    extra={"component": component.name, "error": str(exc), "retry_in_s": restarts.delay()},
                )

    def run(self, on_started: Callable[[list[StartResult]], None]) -> None:
        """Start what is missing, supervise until a signal arrives, then stop the whole stack.

        A failed first start raises ``StackError`` after stopping what was started.
        """
        other = supervisor_pid(self.stack)
        if other is not None:
            raise StackError(f"the stack is already supervised in the foreground by pid {other}")
        record_self(self.stack)
        try:
            try:
                results = up(self.stack, self.components, self.cancelled)
            except Cancelled:
                return
            on_started(results)
            while not self.stopping:
                self.check_once()
                deadline = time.monotonic() + CHECK_INTERVAL_S
                while not self.stopping and time.monotonic() < deadline:
                    time.sleep(0.1)
        finally:
            down(self.stack)
            self.stack.pid_file(SUPERVISOR).remove()
