"""``cxr-triage simulate live``: real images through the running stack, read by simulated radiologists.

Arrivals follow a pattern (``single``: one every ``gap`` seconds; ``burst``: ``burst`` at once, every
``gap``; ``poisson``: rate λ; ``diurnal``: a day's curve, ``DIURNAL_PROFILE``, compressed into ``day_s``
seconds). Each arrival is an image of DIR (CheXpert layout, so its labels are known) with the least
significant bit of 64 corner pixels set from a random nonce: a new study for the stack (ids are content
hashes) that looks the same to the model.

K simulated radiologists sign in with tokens of their own (``sim-reader-N`` in the user file), claim the next
study from the API, open its image, read for a drawn reading time (minutes, divided by ``speed``), and post a
verdict made from the image's ground-truth labels, so the stream processors get real feedback. A study the
simulator cannot give a truthful verdict for (one it did not send and whose image is not in DIR) is kept
leased, unread, until the end of the run and then released for real radiologists.

Time compression applies to reading only: the worklist ages studies in wall-clock time, so the order seen here
is the system's at the compressed pace. The reading-shift figures are ``simulate report``'s job.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
import numpy as np
from confluent_kafka import Consumer, KafkaError, TopicPartition
from PIL import Image

from bench.pipeline import prediction_offsets
from bench.simulate.queueing import reading_times
from bench.stats import percentile
from cxr_triage.events import PredictionEventV1
from cxr_triage.image_store import open_image_store
from cxr_triage.imaging import decode_grayscale
from cxr_triage.ingest.pseudonym import pseudonymiser
from cxr_triage.ingest.publisher import EventPublisher
from cxr_triage.ingest.service import publish_images
from cxr_triage.ingest.validate import PreparedImage, prepare_bytes
from cxr_triage.labels import LABELS, NO_FINDING
from cxr_triage.settings import Settings
from trainer.data.sources import Example

logger = logging.getLogger(__name__)

Pattern = Literal["single", "burst", "poisson", "diurnal"]
PATTERNS: tuple[Pattern, ...] = ("single", "burst", "poisson", "diurnal")

# Relative arrivals per hour of the day (00-23) at a hospital's chest X-ray reading list: the night's ED and
# ward films, the morning ward round peak, outpatients through the afternoon. An illustrative shape (it is
# normalised), not a measured one: replay a real day with ``simulate report --timestamps``.
DIURNAL_PROFILE: tuple[float, ...] = (
    2, 2, 1.5, 1.5, 1.5, 2, 3, 5, 8, 10, 10, 9, 7, 8, 9, 9, 8, 6, 5, 4, 4, 3, 3, 2,
)  # fmt: skip


def arrival_offsets(
    pattern: Pattern,
    n: int,
    rng: np.random.Generator,
    *,
    gap_s: float = 1.0,
    burst: int = 10,
    rate_per_s: float = 1.0,
    day_s: float = 240.0,
) -> np.ndarray:
    """Seconds from the start at which each of ``n`` studies is sent, nondecreasing."""
    if pattern == "single":
        return np.arange(n) * gap_s
    if pattern == "burst":
        return (np.arange(n) // burst) * gap_s
    if pattern == "poisson":
        return np.concatenate([[0.0], np.cumsum(rng.exponential(1.0 / rate_per_s, n - 1))])
    # diurnal: n arrival times drawn from the day's piecewise-constant intensity (inverse CDF), in order
    weights = np.asarray(DIURNAL_PROFILE, dtype=float)
    cdf = np.concatenate([[0.0], np.cumsum(weights) / weights.sum()])
    hours = np.interp(np.sort(rng.uniform(0.0, 1.0, n)), cdf, np.arange(25.0))
    return hours / 24.0 * day_s


@dataclass
class LiveStudy:
    """One study the simulator sent (or met on the worklist with a known truth), and what happened to it."""

    study_id: str
    abnormal: bool
    labels: dict[str, int]
    uncertain: list[str]
    own: bool = True  # sent by this run
    sent_at: float | None = None  # time.time()
    scored_at: float | None = None  # Kafka timestamp of its first prediction
    tier: str | None = None
    read_at: float | None = None
    reader: str | None = None


def verdict_of(example: Example) -> tuple[dict[str, int], list[str]]:
    """The verdict a radiologist who agrees with the dataset would give: positives (and uncertain ones, marked
    so) present, the rest absent, No Finding exactly when the image is normal."""
    raw = dict(zip(LABELS, example.labels, strict=True))
    labels = {label: int(raw[label] in (1.0, -1.0)) for label in LABELS}
    labels[NO_FINDING] = int(not example.abnormal)
    uncertain = [label for label in LABELS if raw[label] == -1.0 and label != NO_FINDING]
    return labels, uncertain


def disguised(data: bytes, nonce: int) -> bytes:
    """The image as a PNG with the lowest bit of its first 64 pixels set from ``nonce``: a new content hash."""
    pixels = decode_grayscale(data).copy()
    bits = np.array([(nonce >> i) & 1 for i in range(64)], dtype=np.uint8)
    corner = pixels.reshape(-1)[:64]
    pixels.reshape(-1)[:64] = (corner & 0xFE) | bits
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def prepare_arrivals(
    examples: Sequence[Example], picks: Sequence[int], settings: Settings, rng: np.random.Generator
) -> list[tuple[PreparedImage, LiveStudy]]:
    """Each pick a new study of its image (``disguised``), checked as the producer checks every image."""
    pseudonyms = pseudonymiser(settings)
    arrivals = []
    for index in picks:
        example = examples[index]
        prepared = prepare_bytes(
            disguised(example.path.read_bytes(), int(rng.integers(0, 2**63))), pseudonyms
        )
        labels, uncertain = verdict_of(example)
        arrivals.append((prepared, LiveStudy(prepared.study_id, bool(example.abnormal), labels, uncertain)))
    return arrivals


@dataclass
class Ledger:
    """What every thread of the run reports, under one lock."""

    studies: dict[str, LiveStudy]
    known: dict[str, Example]  # the images of DIR as they are, by study id: a backlog study of theirs
    lock: threading.Lock = field(default_factory=threading.Lock)
    held: list[tuple[str, str]] = field(default_factory=list)  # (reader, study id) kept leased, unread
    errors: Counter[str] = field(default_factory=Counter)
    sent: int = 0
    scored: int = 0
    read: int = 0
    backlog_read: int = 0

    def own_done(self) -> bool:
        with self.lock:
            return all(s.read_at is not None for s in self.studies.values() if s.own)

    def study_for(self, study_id: str) -> LiveStudy | None:
        with self.lock:
            found = self.studies.get(study_id)
            if found is None and study_id in self.known:
                labels, uncertain = verdict_of(self.known[study_id])
                found = LiveStudy(study_id, bool(self.known[study_id].abnormal), labels, uncertain, own=False)
                self.studies[study_id] = found
            return found


def send(
    arrivals: Sequence[tuple[PreparedImage, LiveStudy]],
    offsets: np.ndarray,
    settings: Settings,
    ledger: Ledger,
    stop: threading.Event,
) -> None:
    """Publish each study at its offset through the producer's own code (store, then ``cxr.studies.v1``)."""
    store = open_image_store(settings)
    started = time.monotonic()
    with EventPublisher(settings, client_id="cxr-simulate-live") as publisher:
        for (prepared, study), offset in zip(arrivals, offsets, strict=True):
            if stop.wait(max(0.0, started + float(offset) - time.monotonic())):
                return
            with ledger.lock:
                study.sent_at = time.time()
            publish_images([prepared], store=store, publisher=publisher, source="simulate-live")
            publisher.flush(30)
            with ledger.lock:
                ledger.sent += 1


def watch_predictions(
    settings: Settings, start: Sequence[TopicPartition], ledger: Ledger, stop: threading.Event
) -> None:
    """Note when each of this run's studies was first scored (its prediction's Kafka timestamp)."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap_servers,
            "group.id": "cxr-simulate-live",  # assign() only: never joins a group nor commits
            "enable.auto.commit": False,
        }
    )
    consumer.assign(list(start))
    try:
        while not stop.is_set():
            message = consumer.poll(0.5)
            if message is None:
                continue
            error = message.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    with ledger.lock:
                        ledger.errors[f"predictions: {error.name()}"] += 1
                continue
            value, key = message.value(), message.key()
            if value is None or key is None:
                continue
            prediction = PredictionEventV1.from_bytes(value)
            if key.decode() != prediction.study_id:
                continue  # a challenger's shadow prediction (``topics.shadow_key``), not the served one
            with ledger.lock:
                study = ledger.studies.get(prediction.study_id)
                if study is not None and study.own and study.scored_at is None:
                    study.scored_at = message.timestamp()[1] / 1000.0
                    study.tier = prediction.tier.value if prediction.tier else None
                    ledger.scored += 1
    finally:
        consumer.close()


@dataclass(frozen=True)
class Reading:
    kind: str
    mean_min: float
    sd_min: float | None
    speed: float  # simulated minutes per wall-clock minute

    def draw(self, rng: np.random.Generator) -> float:
        """Seconds of wall-clock time for one reading."""
        minutes = reading_times(rng, 1, kind=self.kind, mean_min=self.mean_min, sd_min=self.sd_min)[0]
        return float(minutes) * 60.0 / self.speed


def read_studies(
    name: str,
    token: str,
    api_url: str,
    reading: Reading,
    ledger: Ledger,
    stop: threading.Event,
    seed: int,
    *,
    poll_s: float = 0.2,
    lease_s: float = 600.0,
) -> None:
    """One radiologist's shift: sign in, then claim, open, read and report until ``stop``."""
    rng = np.random.default_rng(seed)
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=api_url, headers=headers, timeout=30.0) as api:
        api.get("/me").raise_for_status()  # signed in, or a clear error before any claim
        while not stop.is_set():
            response = api.post("/worklist/claim", json={"lease_s": lease_s})
            if response.status_code == 204:
                stop.wait(poll_s)
                continue
            response.raise_for_status()
            claimed = response.json()
            study = ledger.study_for(claimed["study_id"])
            if study is None:
                with ledger.lock:
                    ledger.held.append((name, claimed["study_id"]))
                continue
            api.get(f"/studies/{study.study_id}/image").raise_for_status()
            if stop.wait(reading.draw(rng)):
                api.post(f"/studies/{study.study_id}/release")
                return
            body = {"labels": study.labels, "uncertain": study.uncertain, "note": None}
            answer = api.post(f"/studies/{study.study_id}/verdict", json=body)
            if answer.is_error:  # e.g. 409: the lease ran out and another reader has it; counted, not fatal
                with ledger.lock:
                    ledger.errors[f"verdict: HTTP {answer.status_code}"] += 1
                continue
            with ledger.lock:
                study.read_at, study.reader = time.time(), name
                if study.tier is None:
                    study.tier = claimed["sla"]["tier"]
                if study.own:
                    ledger.read += 1
                else:
                    ledger.backlog_read += 1


def _recorded(
    ledger: Ledger, what: str, stop: threading.Event, work: Callable[[], None]
) -> Callable[[], None]:
    """``work`` for a thread: an exception is counted in the ledger and ends the run (reported, not lost)."""

    def run() -> None:
        try:
            work()
        except Exception as exc:  # any failure of a thread: the summary says which and why
            logger.warning("simulator thread failed", extra={"thread": what, "error": repr(exc)})
            with ledger.lock:
                ledger.errors[f"{what}: {type(exc).__name__}: {exc}"[:200]] += 1
            stop.set()

    return run


@dataclass(frozen=True)
class LivePlan:
    arrivals: Sequence[tuple[PreparedImage, LiveStudy]]
    offsets: np.ndarray
    reading: Reading
    tokens: dict[str, str]  # reader name -> token
    seed: int
    timeout_s: float


def run_live(
    settings: Settings,
    plan: LivePlan,
    ledger: Ledger,
    *,
    progress: Callable[[Ledger], None] | None = None,
    tick_s: float = 0.5,
) -> float:
    """Send, score and read every study of ``plan`` (or until ``timeout_s``); the seconds it took."""
    stop, senders_done = threading.Event(), threading.Event()
    start = prediction_offsets(settings)  # before the first send: no prediction of ours is missed
    threads = [
        threading.Thread(
            target=_recorded(
                ledger, "predictions", stop, lambda: watch_predictions(settings, start, ledger, stop)
            ),
            daemon=True,
        )
    ]
    threads += [
        threading.Thread(
            target=_recorded(
                ledger,
                name,
                stop,
                lambda name=name, token=token, i=i: read_studies(  # type: ignore[misc]
                    name, token, settings.api_url, plan.reading, ledger, stop, plan.seed + i
                ),
            ),
            daemon=True,
        )
        for i, (name, token) in enumerate(plan.tokens.items())
    ]

    def send_all() -> None:
        send(plan.arrivals, plan.offsets, settings, ledger, stop)
        senders_done.set()

    threads.append(threading.Thread(target=_recorded(ledger, "sender", stop, send_all), daemon=True))
    began = time.monotonic()
    for thread in threads:
        thread.start()
    try:
        while not stop.is_set() and time.monotonic() - began < plan.timeout_s:
            if senders_done.is_set() and ledger.own_done():
                break
            if progress is not None:
                progress(ledger)
            time.sleep(tick_s)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=40)
        if progress is not None:
            progress(ledger)
        release_held(settings.api_url, plan.tokens, ledger.held)
    return time.monotonic() - began


def release_held(api_url: str, tokens: dict[str, str], held: Sequence[tuple[str, str]]) -> None:
    for reader, study_id in held:
        with httpx.Client(base_url=api_url, timeout=30.0) as api:
            api.post(f"/studies/{study_id}/release", headers={"Authorization": f"Bearer {tokens[reader]}"})


def _seconds(values: Sequence[float]) -> dict[str, float | int]:
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "mean": round(float(np.mean(values)), 2),
        "p50": round(percentile(values, 50), 2),
        "p90": round(percentile(values, 90), 2),
        "p95": round(percentile(values, 95), 2),
        "p99": round(percentile(values, 99), 2),
        "max": round(max(values), 2),
    }


def summarise_live(ledger: Ledger, *, seconds: float, settings: dict[str, Any]) -> dict[str, Any]:
    """The ``--json`` summary: counts, end-to-end latency and time-to-read by tier and by truth (seconds)."""
    own = [s for s in ledger.studies.values() if s.own and s.sent_at is not None]
    e2e = [s.scored_at - s.sent_at for s in own if s.scored_at is not None and s.sent_at is not None]
    read = [s for s in own if s.read_at is not None and s.sent_at is not None]

    def to_read(chosen: Callable[[LiveStudy], bool]) -> dict[str, float | int]:
        return _seconds([s.read_at - s.sent_at for s in read if chosen(s)])  # type: ignore[operator]

    return {
        "studies_sent": ledger.sent,
        "studies_scored": ledger.scored,
        "studies_read": ledger.read,
        "backlog_read": ledger.backlog_read,
        "held_unread": len(ledger.held),
        "seconds": round(seconds, 1),
        "e2e_latency_s": _seconds(e2e),
        "time_to_read_s": {
            "by_tier": {
                tier: to_read(lambda s, tier=tier: s.tier == tier)  # type: ignore[misc]
                for tier in sorted({s.tier for s in read if s.tier})
            },
            "by_truth": {
                "abnormal": to_read(lambda s: s.abnormal),
                "normal": to_read(lambda s: not s.abnormal),
            },
        },
        "errors": dict(ledger.errors),
        "settings": settings,
    }
