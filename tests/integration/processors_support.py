"""A private broker and the real ``cxr-triage processors run`` for the stream processors' integration tests.

Each test gets its own broker (a few seconds to start) so that what the processor reads from the start of
the topics is that test's events alone, and its own state folder (feedback store) and processors port.
Events are produced directly as JSON with the project's producer settings (murmur2 partitioner).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from confluent_kafka import Consumer, Producer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from cxr_triage import topics
from cxr_triage.events import Event, VerdictEventV1
from cxr_triage.feedback.store import FeedbackStore
from cxr_triage.kafka_config import producer_config
from cxr_triage.settings import Settings
from deploy.testing import cxr, free_ports, stack_env
from tests.integration.kafka_support import KafkaBroker, shared_jars, start_kafka

T = TypeVar("T")


def wait_for(check: Callable[[], T | None], *, timeout_s: float, what: str, every_s: float = 0.25) -> T:
    """Poll ``check`` until it returns a truthy value; fail with ``what`` when ``timeout_s`` runs out."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(every_s)


@dataclass
class Processor:
    env: dict[str, str]
    home: Path
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.home / "processors.log"

    @property
    def port(self) -> int:
        return int(self.env["CXR_PROCESSORS_PORT"])

    def start(self) -> None:
        self.starts += 1
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "cxr_triage", "processors", "run"],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for(self.metrics_text, timeout_s=60, what="the processors' /metrics")

    def kill9(self) -> None:
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill9()

    def metrics_text(self) -> str | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=2) as response:
                return str(response.read().decode())
        except OSError:
            return None

    def metric(self, name: str, **labels: str) -> float:
        text = self.metrics_text() or ""
        return sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
        )

    def where_it_is(self) -> list[str]:
        """The log's last lines, then the stacks of the processor's own code among its asyncio tasks and threads
        (mode's worker dumps every one of them into the log on SIGUSR1)."""
        if not self.log.exists():
            return ["(no processor log)"]
        before = self.log.stat().st_size
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGUSR1)
            time.sleep(3)
        text = self.log.read_text(errors="replace")
        lines = text[:before].splitlines()[-80:]
        lines += [
            line for line in (self.metrics_text() or "").splitlines() if line.startswith("cxr_processors_")
        ]
        lines += self._group_positions()
        stacks = text[before:].split("\nStack for ")
        ours = [block for block in stacks if "stream_processors" in block]
        lines.append(f"--- {len(stacks) - 1} stacks dumped on SIGUSR1, {len(ours)} in stream_processors ---")
        for block in ours:
            lines += [
                "Stack for " + line if i == 0 else line for i, line in enumerate(block.splitlines()[:60])
            ]
        return lines

    def _group_positions(self) -> list[str]:
        """Per topic: what the processors' group committed against what the topic holds."""
        group = self.env["CXR_PROCESSORS_APP_ID"]
        consumer = Consumer({"bootstrap.servers": self.env["CXR_KAFKA_BOOTSTRAP_SERVERS"], "group.id": group})
        try:
            found = []
            for topic, meta in sorted(consumer.list_topics(timeout=10).topics.items()):
                if topic.startswith("__"):
                    continue
                tps = [TopicPartition(topic, p) for p in sorted(meta.partitions)]
                committed = consumer.committed(tps, timeout=10)
                ends = [consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in tps]
                found.append(f"{topic}: committed {[c.offset for c in committed]} of {ends}")
            return found
        except Exception as exc:  # a diagnostic: never the reason a test fails
            return [f"group offsets unavailable: {exc!r}"]
        finally:
            consumer.close()

    @property
    def store(self) -> FeedbackStore:
        return FeedbackStore(Settings(home=self.home).feedback_db_path)

    def stats(self) -> dict[str, Any]:
        result = cxr(["feedback", "stats", "--json"], self.env, timeout_s=60)
        assert result.returncode == 0, result.stderr
        return dict(json.loads(result.stdout))


class Events:
    """Publishes events the way our services do (idempotent producer, Java partitioner)."""

    def __init__(self, broker: KafkaBroker) -> None:
        self._producer = Producer(producer_config(broker.settings, client_id=f"test-{uuid.uuid4().hex[:6]}"))

    def send(self, topic: str, event: Event) -> None:
        key = event.key if isinstance(event, VerdictEventV1) else getattr(event, "study_id", None)
        if topic == topics.TRAINING_RESULTS:
            key = getattr(event, "request_id", None)
        self._producer.produce(topic, key=key.encode() if key else None, value=event.to_bytes())
        self._producer.poll(0)

    def flush(self) -> None:
        assert self._producer.flush(30) == 0, "events not delivered"


@contextlib.contextmanager
def processor_stack(tmp_path: Path, **settings: str) -> Iterator[tuple[KafkaBroker, Processor, Events]]:
    """A private broker, a processor (not started) on it with ``settings`` (CXR_ names without the prefix)."""
    with start_kafka(tmp_path / "kafka-home", shared_jars(tmp_path)) as broker:
        home = tmp_path / "processors"
        home.mkdir()
        env = stack_env(home)
        (port,) = free_ports(1)
        env |= {
            "CXR_KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
            "CXR_KAFKA_PARTITIONS": str(broker.settings.kafka_partitions),
            "CXR_PROCESSORS_PORT": str(port),
            "CXR_PROCESSORS_APP_ID": f"processors-{uuid.uuid4().hex[:8]}",
            "CXR_METRICS_INTERVAL_S": "2",
            "CXR_DRIFT_INTERVAL_S": "2",
            "CXR_UNMATCHED_CHECK_INTERVAL_S": "1",
        }
        env |= {f"CXR_{name.upper()}": value for name, value in settings.items()}
        processor = Processor(env=env, home=home)
        try:
            yield broker, processor, Events(broker)
        except BaseException:
            # Shown with the failure: what the processor did, and where each of its threads and asyncio tasks
            # is now (mode's worker writes them to the log on SIGUSR1), is the first thing one asks.
            print(*processor.where_it_is(), sep="\n")
            raise
        finally:
            processor.stop()
