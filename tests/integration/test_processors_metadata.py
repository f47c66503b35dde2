"""The fault behind a join agent that crash-looped in CI: the producer's metadata without the table's changelog
topic (a new producer, or metadata that stopped tracking it). ``keep_tracked``, run before every table write,
puts it back. Against the session's real broker; no message is sent."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaProducer

from cxr_triage import topics
from stream_processors.kafka_metadata import keep_tracked
from tests.integration.kafka_support import KafkaBroker

pytestmark = pytest.mark.integration

CHANGELOG, OTHER, LATER = topics.FEEDBACK, topics.METRICS, topics.DRIFT  # any three existing topics


async def _scenario(bootstrap: str) -> dict[str, bool]:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        client = producer.client

        def known() -> bool:
            return client.cluster.partitions_for_topic(CHANGELOG) is not None

        seen = {"known to a new producer": known()}  # as after a restart: Faust's key_partition would crash
        await keep_tracked(client, CHANGELOG)
        seen["known once tracked"] = known()
        await client.add_topic(LATER)  # a later refresh
        seen["known after the next refresh"] = known()
        await client.set_topics([OTHER])  # metadata that no longer tracks it: the loss seen in CI
        seen["known after it was dropped"] = known()
        await keep_tracked(client, CHANGELOG)  # the next write's check brings it back
        seen["known at the next write"] = known()
        return seen
    finally:
        await producer.stop()


def test_the_changelog_topic_is_in_the_producers_metadata_before_every_write(kafka: KafkaBroker) -> None:
    seen = asyncio.run(_scenario(kafka.bootstrap))
    assert seen == {
        "known to a new producer": False,
        "known once tracked": True,
        "known after the next refresh": True,
        "known after it was dropped": False,
        "known at the next write": True,
    }
