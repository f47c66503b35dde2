"""Keep a topic in an aiokafka client's metadata, for code that reads the metadata without waiting on it.

Faust's tables with ``use_partitioner`` hash a key with the producer's metadata directly (``key_partition``):
a topic missing there fails every write with ``'NoneType' object is not iterable`` and the agent crash-loops.
Asking once at the first write is not enough: in CI the join agent crashed that way every 5 s for minutes
after an earlier write had succeeded, so the producer's metadata had lost the changelog topic (a refresh that
no longer tracked it, or a producer created anew). So the topic is checked before every write, on the
producer in use, and tracked (``add_topic``) again when missing.
"""

from __future__ import annotations

from typing import Any


async def keep_tracked(client: Any, topic: str) -> None:
    """Return once ``client`` tracks ``topic`` and its metadata holds the topic's partitions."""
    if topic in client._topics and client.cluster.partitions_for_topic(topic) is not None:
        return  # the usual case: a set and a dictionary lookup
    await client.add_topic(topic)
    await client._wait_on_metadata(topic)
