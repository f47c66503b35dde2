"""The worker's view of a Kafka message: plain data, so logic and tests never hold librdkafka objects."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class KafkaMessage(Protocol):
    def topic(self) -> str | None: ...
    def partition(self) -> int | None: ...
    def offset(self) -> int | None: ...
    def key(self) -> str | bytes | None: ...
    def value(self) -> str | bytes | None: ...


def _as_bytes(data: str | bytes | None) -> bytes | None:
    return data.encode() if isinstance(data, str) else data


@dataclass(frozen=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None

    @classmethod
    def from_message(cls, message: KafkaMessage) -> Record:
        partition, offset = message.partition(), message.offset()
        return cls(
            topic=message.topic() or "",
            partition=-1 if partition is None else partition,
            offset=-1 if offset is None else offset,
            key=_as_bytes(message.key()),
            value=_as_bytes(message.value()),
        )

    @property
    def where(self) -> dict[str, object]:
        """Log fields locating the message, with no content from it."""
        return {"topic": self.topic, "partition": self.partition, "offset": self.offset}
