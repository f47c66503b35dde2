"""The fault behind the processors' two CI failures: aiokafka refreshes metadata for the topics its client
*tracks*, and each refresh replaces the partition map. A topic that drops out of it fails Faust's
``key_partition`` (the join agent crash-looped) and leaves a batch already queued for it waiting for a leader
for ever (``flush`` before every commit hung: the processors went silent). ``keep_tracked`` keeps every output
topic tracked. Against the session's real broker."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaProducer

from cxr_triage import topics
from stream_processors.kafka_metadata import keep_tracked
from tests.integration.kafka_support import KafkaBroker

pytestmark = pytest.mark.integration

CHANGELOG, OUTPUT, OTHER = topics.FEEDBACK, topics.METRICS, topics.DRIFT  # any three existing topics


async def _scenario(bootstrap: str, *, outputs: list[str]) -> dict[str, bool]:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, request_timeout_ms=60_000)
    await producer.start()
    try:
        client = producer.client

        def known(topic: str) -> bool:
            return client.cluster.partitions_for_topic(topic) is not None

        seen = {"changelog known to a new producer": known(CHANGELOG)}  # Faust's key_partition would crash
        await keep_tracked(client, outputs)
        seen["changelog known once tracked"] = known(CHANGELOG)
        await producer.send_and_wait(OUTPUT, b"first")  # known now: ``send`` does not track it itself
        await client.set_topics([OTHER])  # a refresh for other topics only: the loss seen in CI
        seen["output known after the refresh"] = known(OUTPUT)
        await keep_tracked(client, outputs)  # what the processors do before every table write
        seen["output known at the next write"] = known(OUTPUT)
        await client.set_topics([*client._topics, OTHER])  # later refreshes add topics, drop none
        delivered = await asyncio.wait_for(await producer.send(OUTPUT, b"second"), timeout=20)
        seen["a later batch delivered"] = delivered.topic == OUTPUT
        return seen
    finally:
        await producer.stop()


def test_every_output_topic_stays_in_the_producers_metadata(kafka: KafkaBroker) -> None:
    seen = asyncio.run(_scenario(kafka.bootstrap, outputs=[CHANGELOG, OUTPUT]))
    assert seen == {
        "changelog known to a new producer": False,
        "changelog known once tracked": True,
        "output known after the refresh": False,
        "output known at the next write": True,
        "a later batch delivered": True,
    }
