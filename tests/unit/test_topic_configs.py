"""Which topic configs `ensure_topics` sets again (those of ``topics.CONFIGS`` a topic does not have), and how it
waits out a broker that does not know its new topics yet."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from cxr_triage import topics
from cxr_triage.settings import Settings
from deploy.kafka_broker import KafkaSetupError, config_drift, ensure_topics


def test_topics_with_their_configs_need_nothing() -> None:
    current = {name: {**wanted, "segment.ms": "1"} for name, wanted in topics.CONFIGS.items()}
    assert config_drift(current) == {}


def test_only_the_differing_entries_are_set_again() -> None:
    current: dict[str, dict[str, str | None]] = {name: dict(w) for name, w in topics.CONFIGS.items()}
    current[topics.VERDICTS]["cleanup.policy"] = "delete"  # created by an earlier cxr-triage
    current[topics.DLQ]["retention.ms"] = "60000"
    del current[topics.DRIFT]  # not described (just created elsewhere): everything is set
    assert config_drift(current) == {
        topics.VERDICTS: {"cleanup.policy": "compact"},
        topics.DLQ: {"retention.ms": topics.CONFIGS[topics.DLQ]["retention.ms"]},
        topics.DRIFT: dict(topics.CONFIGS[topics.DRIFT]),
    }


def test_every_topic_has_configs() -> None:
    assert set(topics.CONFIGS) == set(topics.ALL)


class _Future:
    def __init__(self, value: Any = None, error: KafkaError | None = None) -> None:
        self.value, self.error = value, error

    def result(self, timeout: float | None = None) -> Any:
        if self.error is not None:
            raise KafkaException(self.error)
        return self.value


class _Entry:
    def __init__(self, value: str) -> None:
        self.value = value


class _JustStartedBroker:
    """An admin whose broker answers UNKNOWN_TOPIC_OR_PART to ``describe_configs`` ``failures`` times first."""

    def __init__(self, failures: int, error: int = KafkaError.UNKNOWN_TOPIC_OR_PART) -> None:
        self.failures, self.error = failures, error
        self.topics: set[str] = set()
        self.described = 0

    def list_topics(self, topic: str | None = None, timeout: float = 5) -> SimpleNamespace:
        meta = {name: SimpleNamespace(partitions={0: None}, error=None) for name in self.topics}
        return SimpleNamespace(topics=meta)

    def create_topics(self, new: list[Any], operation_timeout: float) -> dict[str, _Future]:
        self.topics.update(t.topic for t in new)
        return {t.topic: _Future() for t in new}

    def describe_configs(self, resources: list[Any]) -> dict[Any, _Future]:
        self.described += 1
        if self.described <= self.failures:
            return {r: _Future(error=KafkaError(self.error)) for r in resources}
        return {r: _Future({k: _Entry(v) for k, v in topics.CONFIGS[r.name].items()}) for r in resources}


def test_a_just_started_broker_that_does_not_know_its_new_topics_yet_is_asked_again() -> None:
    admin = _JustStartedBroker(failures=2)
    settings = Settings(kafka_partitions=1)
    ensure_topics(settings, timeout_s=30, admin=admin)
    assert admin.topics == set(topics.ALL) and admin.described == 3


def test_an_error_that_asking_again_cannot_clear_fails_at_once_with_the_reason() -> None:
    admin = _JustStartedBroker(failures=99, error=KafkaError.TOPIC_AUTHORIZATION_FAILED)
    with pytest.raises(KafkaSetupError, match="cannot list, create or configure topics"):
        ensure_topics(Settings(kafka_partitions=1), timeout_s=30, admin=admin)
    assert admin.described == 1


def test_a_broker_that_never_settles_fails_after_the_timeout() -> None:
    admin = _JustStartedBroker(failures=10**6)
    with pytest.raises(KafkaSetupError, match="UNKNOWN_TOPIC_OR_PART"):
        ensure_topics(Settings(kafka_partitions=1), timeout_s=1.5, admin=admin)
    assert admin.described > 1
