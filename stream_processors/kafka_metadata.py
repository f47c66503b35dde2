"""Keep every topic the processors write to in the producer's metadata.

aiokafka's client refreshes metadata for the topics it *tracks* only, and each refresh replaces the partition
map with the response: a topic known from an earlier response but not tracked (``send`` adds a topic only when
it is unknown at that moment) drops out at the next refresh. Two failures in CI came from that:

- Faust's tables with ``use_partitioner`` hash a key with the producer's metadata directly (``key_partition``):
  the changelog topic missing there failed every write with ``'NoneType' object is not iterable`` and the join
  agent crash-looped;
- a batch already queued for a topic that then dropped out waited for its partition's leader for ever (the
  refreshes it forced never asked for that topic): the producer's ``flush`` before every offset commit hung, so
  the consumer stopped committing and delivering, and the processors went silent.

So every output topic is tracked, checked before every table write (a set and a dictionary lookup each time).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any


async def keep_tracked(client: Any, topics: Collection[str]) -> None:
    """Return once ``client`` tracks every one of ``topics`` and its metadata holds their partitions."""
    tracked: set[str] = client._topics
    if all(t in tracked and client.cluster.partitions_for_topic(t) is not None for t in topics):
        return  # the usual case
    await client.set_topics(tracked | set(topics))  # tracked from now on, at every refresh
    for topic in topics:
        await client._wait_on_metadata(topic)
