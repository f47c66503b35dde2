"""Reading shifts as a discrete-event simulation: K radiologists, one worklist, FIFO or the system's order.

Our own event loop (a heap of the times radiologists become free, arrivals in time order) rather than SimPy:
the model is one queue and K identical servers, non-preemptive (a radiologist finishes the study they
opened), so two kinds of event suffice and a run of 100 000 studies takes about a second.

The triage order is the worklist's: tiers and the aging effective priority of ``cxr_triage.sla`` (the same
``index_score`` / ``effective_priority`` the API's scripts are defined by), not a re-implementation. With
``aging=False`` it is a strict priority order (tier, then model priority, then arrival): what Cobham's
formula describes.

Times are in minutes throughout.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from cxr_triage.sla import TIERS, SlaPolicy, Tier


@dataclass(frozen=True)
class Arrivals:
    """One shift's studies, in arrival order: when each came, how long it takes to read, what the model said."""

    at_min: np.ndarray  # nondecreasing
    reading_min: np.ndarray
    abnormal: np.ndarray  # bool: the ground truth
    priority: np.ndarray  # the model's priority in [0, 1]
    tier: tuple[Tier, ...]

    def __len__(self) -> int:
        return len(self.at_min)


class Worklist(Protocol):
    def push(self, index: int) -> None: ...

    def pop(self, now_min: float) -> int: ...

    def __len__(self) -> int: ...


class Fifo:
    """First in, first out: today's reading order."""

    def __init__(self, arrivals: Arrivals) -> None:
        self._queue: deque[int] = deque()

    def push(self, index: int) -> None:
        self._queue.append(index)

    def pop(self, now_min: float) -> int:
        return self._queue.popleft()

    def __len__(self) -> int:
        return len(self._queue)


class Triage:
    """The worklist's order: the highest effective priority first (``SlaPolicy.effective_priority``).

    Within a tier the order never changes with time (``SlaPolicy.index_score``), so each tier is a heap and a
    pick compares the three heads' effective priorities now, as the claim script does.
    """

    def __init__(self, arrivals: Arrivals, sla: SlaPolicy, *, aging: bool = True) -> None:
        self._a, self._sla, self._aging = arrivals, sla, aging
        self._heaps: dict[Tier, list[tuple[float, float, int]]] = {tier: [] for tier in TIERS}
        self._size = 0

    def push(self, index: int) -> None:
        a, tier = self._a, self._a.tier[index]
        priority, at = float(a.priority[index]), float(a.at_min[index])
        if self._aging:
            key = -self._sla.index_score(priority=priority, tier=tier, received_ts=at * 60.0)
        else:
            key = -priority
        heapq.heappush(self._heaps[tier], (key, at, index))
        self._size += 1

    def pop(self, now_min: float) -> int:
        if self._aging:
            heads = [
                (self._effective(heap[0][2], now_min), -heap[0][1], tier)
                for tier, heap in self._heaps.items()
                if heap
            ]
            tier = max(heads)[2]
        else:
            tier = next(t for t in TIERS if self._heaps[t])
        self._size -= 1
        return heapq.heappop(self._heaps[tier])[2]

    def _effective(self, index: int, now_min: float) -> float:
        a = self._a
        return self._sla.effective_priority(
            priority=float(a.priority[index]),
            tier=a.tier[index],
            waited_s=(now_min - float(a.at_min[index])) * 60.0,
        )

    def __len__(self) -> int:
        return self._size


def waits(arrivals: Arrivals, worklist: Worklist, radiologists: int) -> np.ndarray:
    """Each study's wait (minutes from arrival to being opened), in arrival order.

    Invariant: the worklist is never non-empty while a radiologist is free, so when something waits every
    radiologist is busy and the next event is either the next arrival or the next radiologist finishing.
    """
    n = len(arrivals)
    at, reading = arrivals.at_min, arrivals.reading_min
    free = [0.0] * radiologists  # when each radiologist is next free (a heap)
    out = np.empty(n)
    i = 0

    def start(now: float) -> None:
        j = worklist.pop(now)
        out[j] = now - at[j]
        heapq.heapreplace(free, now + float(reading[j]))

    while i < n or len(worklist):
        if not len(worklist):
            worklist.push(i)
            now = float(at[i])
            i += 1
            if free[0] <= now:
                start(now)
        elif i < n and at[i] < free[0]:
            worklist.push(i)
            i += 1
        else:
            start(free[0])
    return out


# -- theory --------------------------------------------------------------------------------------------------


def erlang_c(servers: int, offered: float) -> float:
    """The probability that an arrival waits in M/M/c (``offered`` = λ/μ < c)."""
    if not 0 <= offered < servers:
        raise ValueError(f"offered load {offered} must be below the {servers} servers")
    terms = [offered**k / math.factorial(k) for k in range(servers)]
    last = offered**servers / math.factorial(servers) * servers / (servers - offered)
    return last / (sum(terms) + last)


def mmc_mean_wait(arrival_rate: float, service_rate: float, servers: int) -> float:
    """Mean wait in queue of M/M/c under FIFO (any work-conserving order that ignores reading times)."""
    return erlang_c(servers, arrival_rate / service_rate) / (servers * service_rate - arrival_rate)


def cobham_mean_waits(class_rates: Sequence[float], service_rate: float, servers: int) -> list[float]:
    """Mean wait of each class, highest priority first, in M/M/c with non-preemptive priority and one
    service rate for all classes (Cobham 1954): ``W_k = W0 / ((1 - s_{k-1}) (1 - s_k))`` with
    ``W0 = C(c, a) / (c μ)`` and ``s_k`` the load of classes 1..k."""
    total = sum(class_rates)
    w0 = erlang_c(servers, total / service_rate) / (servers * service_rate)
    loads = [0.0, *itertools.accumulate(rate / (servers * service_rate) for rate in class_rates)]
    return [w0 / ((1 - loads[k]) * (1 - loads[k + 1])) for k in range(len(class_rates))]


# -- arrivals ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pool:
    """The images a shift draws from: the model's priority and tier for each, and the ground truth."""

    priority: np.ndarray
    abnormal: np.ndarray  # bool
    tier: tuple[Tier, ...]


def replayed_minutes(lines: Sequence[str]) -> np.ndarray:
    """Arrival times from a file, one per line (seconds since the epoch, or ISO 8601 with a zone), as
    minutes after the first, sorted; blank lines and a header that is neither are skipped."""
    from datetime import datetime

    seconds = []
    for line in lines:
        text = line.strip()
        if not text:
            continue
        try:
            seconds.append(float(text))
        except ValueError:
            try:
                stamp = datetime.fromisoformat(text)
            except ValueError:
                if seconds:
                    raise ValueError(f"not a timestamp: {text!r}") from None
                continue  # a header
            if stamp.tzinfo is None:
                raise ValueError(f"timestamp without a time zone: {text!r}") from None
            seconds.append(stamp.timestamp())
    if len(seconds) < 2:
        raise ValueError("replayed arrivals need at least two timestamps")
    at = np.sort(np.asarray(seconds))
    return (at - at[0]) / 60.0


def reading_times(
    rng: np.random.Generator, n: int, *, kind: str, mean_min: float, sd_min: float | None = None
) -> np.ndarray:
    """``exponential`` (sd = mean) or ``lognormal`` with this mean and sd (default: sd = mean / 2)."""
    if kind == "exponential":
        return rng.exponential(mean_min, n)
    if kind == "lognormal":
        sd = mean_min / 2 if sd_min is None else sd_min
        sigma2 = math.log1p((sd / mean_min) ** 2)
        return rng.lognormal(math.log(mean_min) - sigma2 / 2, math.sqrt(sigma2), n)
    raise ValueError(f"reading time distribution must be exponential or lognormal, not {kind!r}")


def poisson_shift(
    rng: np.random.Generator,
    pool: Pool,
    *,
    n: int,
    rate_per_min: float,
    prevalence: float,
    reading: np.ndarray,
) -> Arrivals:
    """``n`` Poisson arrivals, each an image of the pool: abnormal with probability ``prevalence``."""
    at_min = np.cumsum(rng.exponential(1.0 / rate_per_min, n))
    return shift_at(rng, pool, at_min=at_min, prevalence=prevalence, reading=reading)


def shift_at(
    rng: np.random.Generator, pool: Pool, *, at_min: np.ndarray, prevalence: float, reading: np.ndarray
) -> Arrivals:
    """Arrivals at ``at_min`` (nondecreasing; Poisson or replayed from a real day), each an image of the
    pool: abnormal with probability ``prevalence``."""
    n = len(at_min)
    abnormal_ids, normal_ids = np.flatnonzero(pool.abnormal), np.flatnonzero(~pool.abnormal)
    if not len(abnormal_ids) or not len(normal_ids):
        raise ValueError("the pool needs abnormal and normal images to draw a prevalence from")
    is_abnormal = rng.random(n) < prevalence
    drawn = np.where(
        is_abnormal,
        rng.choice(abnormal_ids, n),
        rng.choice(normal_ids, n),
    )
    return Arrivals(
        at_min=at_min,
        reading_min=reading,
        abnormal=is_abnormal,
        priority=pool.priority[drawn],
        tier=tuple(pool.tier[k] for k in drawn),
    )
