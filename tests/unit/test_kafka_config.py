"""Every producer keeps an undeliverable message for the configured time, and a flush never gives up sooner."""

from __future__ import annotations

from typing import Any

import pytest

from cxr_triage.ingest import publisher as publisher_module
from cxr_triage.ingest.publisher import EventPublisher
from cxr_triage.kafka_config import producer_config
from cxr_triage.settings import Settings


def test_the_message_timeout_comes_from_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    assert producer_config(Settings(), client_id="t")["message.timeout.ms"] == 30_000
    monkeypatch.setenv("CXR_KAFKA_MESSAGE_TIMEOUT_S", "180")
    config = producer_config(Settings(), client_id="t")
    assert config["message.timeout.ms"] == 180_000 and config["enable.idempotence"] is True


def test_a_flush_waits_at_least_as_long_as_a_message_may_be_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    waited: list[float] = []

    class _Producer:
        def __init__(self, config: dict[str, Any]) -> None:
            self.config = config

        def flush(self, timeout_s: float) -> int:
            waited.append(timeout_s)
            return 0

    monkeypatch.setattr(publisher_module, "Producer", _Producer)
    publisher = EventPublisher(Settings(kafka_message_timeout_s=120), client_id="t")
    publisher.flush()
    publisher.flush(3.0)
    assert waited[0] > 120 and waited[1] == 3.0
