"""A partition revoked while the worker has its partitions paused must not come back paused.

librdkafka keeps a partition's pause flag across a rebalance. The worker pauses its assignment while a
peer (Triton, Redis, Kafka) is down and resumes the assignment it has at the end of the wait; a partition
revoked meanwhile missed that resume, and when the group gave it back (its new owner died) it stayed paused
for ever: the worker-kill fault tests saw its lag never drain. The worker's revoke callback
(``inference_worker.consumer._clear_pause``) resumes partitions on their way out. This test runs the fault
against the real broker, without and with that callback.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from cxr_triage.kafka_config import consumer_config
from inference_worker.consumer import _clear_pause
from tests.integration.kafka_support import KafkaBroker

pytestmark = pytest.mark.integration


def _poll_until(consumer: Consumer, check: Callable[[], bool], timeout_s: float) -> list[Any]:
    got = []
    deadline = time.monotonic() + timeout_s
    while not check() and time.monotonic() < deadline:
        message = consumer.poll(0.2)
        if message is not None and message.error() is None:
            got.append(message)
    return got


def _returns_paused(
    kafka: KafkaBroker, on_revoke: Callable[[Consumer, list[TopicPartition]], None] | None
) -> bool:
    """Pause A's partitions, let B take one, kill B; does A read that partition again once it is back?"""
    topic = f"pause-test-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])[topic].result(30)
    group = f"g-{uuid.uuid4().hex[:8]}"

    def config(name: str) -> dict[str, Any]:
        made = consumer_config(kafka.settings, group_id=group, client_id=name)
        made.update({"session.timeout.ms": 6000, "heartbeat.interval.ms": 500})
        return made

    a = Consumer(config("a"))
    a.subscribe([topic], **({"on_revoke": on_revoke} if on_revoke else {}))
    _poll_until(a, lambda: len(a.assignment()) == 2, 30)
    a.pause(a.assignment())  # a peer is down: the worker waits with everything paused
    b = Consumer(config("b"))
    b.subscribe([topic])
    deadline = time.monotonic() + 30
    while (len(a.assignment()) != 1 or len(b.assignment()) != 1) and time.monotonic() < deadline:
        a.poll(0.1)
        b.poll(0.1)
    assert len(a.assignment()) == 1, "B never took a partition"
    a.resume(a.assignment())  # the wait ends: the worker resumes the assignment it has now
    (moved,) = b.assignment()
    b.close()  # B's partitions come back to A
    _poll_until(a, lambda: len(a.assignment()) == 2, 30)
    producer = Producer({"bootstrap.servers": kafka.bootstrap})
    producer.produce(topic, value=b"after", partition=moved.partition)
    assert producer.flush(10) == 0
    got = _poll_until(a, lambda: False, 8)
    a.close()
    return not any(m.partition() == moved.partition and m.value() == b"after" for m in got)


def test_without_clearing_the_pause_a_returned_partition_stays_paused(kafka: KafkaBroker) -> None:
    assert _returns_paused(kafka, on_revoke=None), "librdkafka no longer keeps the pause: the fix is moot"


def test_the_workers_revoke_callback_clears_it(kafka: KafkaBroker) -> None:
    assert not _returns_paused(kafka, on_revoke=_clear_pause)
