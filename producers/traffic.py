"""Traffic shaping for producers: ``--rate R/s`` with ``--burst N`` is a token bucket.

Up to ``burst`` studies go out at once; after that, one every ``1 / rate`` seconds on average. Used to
replay a PACS export at a realistic pace, or to send a burst on purpose.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import click

_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:/\s*(s|sec|second|m|min|minute|h|hour))?\s*$")
_PER = {
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "h": 3600.0,
    "hour": 3600.0,
}


def parse_rate(text: str) -> float:
    """``5``, ``5/s``, ``30/min``, ``100/h`` -> studies per second."""
    match = _RATE.match(text)
    if match is None or float(match.group(1)) <= 0:
        raise ValueError(
            f"{text!r} is not a rate: write a positive number per s, min or h, e.g. 5/s or 30/min"
        )
    return float(match.group(1)) / _PER[match.group(2) or "s"]


class RateParam(click.ParamType):
    name = "R/s"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, float):
            return value
        try:
            return parse_rate(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


@dataclass
class TokenBucket:
    rate_per_s: float | None  # None: no limit
    burst: int = 1
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    _tokens: float = field(init=False)
    _at: float = field(init=False)

    def __post_init__(self) -> None:
        if self.burst < 1:
            raise ValueError("burst must be at least 1")
        self._tokens = float(self.burst)
        self._at = self.clock()

    def take(self) -> None:
        """Wait until one study may go."""
        if self.rate_per_s is None:
            return
        now = self.clock()
        self._tokens = min(float(self.burst), self._tokens + (now - self._at) * self.rate_per_s)
        self._at = now
        if self._tokens < 1.0:
            wait = (1.0 - self._tokens) / self.rate_per_s
            self.sleep(wait)
            self._at = self.clock()
            self._tokens = 1.0
        self._tokens -= 1.0
