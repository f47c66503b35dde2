"""`ensure_topics` gives every cxr topic its retention (``cxr_triage.topics.CONFIGS``), on creation and again
on topics that an earlier cxr-triage (or an operator) left with other settings, on a real broker."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType

from cxr_triage import topics
from deploy.kafka_broker import config_drift, ensure_topics, topic_configs
from deploy.probes import kafka_admin
from tests.integration.kafka_support import KafkaBroker, shared_jars, start_kafka
from tests.integration.processors_support import wait_for

pytestmark = pytest.mark.integration

BROKER_DEFAULT_RETENTION_MS = str(7 * 24 * 3600 * 1000)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    """A private broker: this module changes topic configs that the API tests' broker must keep."""
    home = tmp_path_factory.mktemp("topic-configs")
    with start_kafka(home, shared_jars(tmp_path_factory.getbasetemp())) as started:
        yield started


def _described(broker: KafkaBroker) -> dict[str, dict[str, str]]:
    return topic_configs(kafka_admin(broker.bootstrap), topics.ALL)


def _settled(
    broker: KafkaBroker, check: Callable[[dict[str, dict[str, str]]], bool], what: str
) -> dict[str, dict[str, str]]:
    """The described configs once ``check`` holds: KRaft applies an altered config on the controller first and
    the broker's view (what ``describe_configs`` reads) follows a moment later."""

    def described_if_settled() -> dict[str, dict[str, str]] | None:
        described = _described(broker)
        return described if check(described) else None

    return wait_for(described_if_settled, timeout_s=30, what=what)


def _alter(broker: KafkaBroker, name: str, entries: list[ConfigEntry]) -> None:
    admin = kafka_admin(broker.bootstrap)  # held until the futures settle: a dropped client cancels them
    futures = admin.incremental_alter_configs(
        [ConfigResource(ResourceType.TOPIC, name, incremental_configs=entries)]
    )
    for future in futures.values():
        future.result(timeout=10)


def _assert_configured(described: dict[str, dict[str, str]]) -> None:
    assert set(described) == set(topics.ALL)
    for name in topics.ALL:
        wanted = topics.CONFIGS[name]
        assert {key: described[name][key] for key in wanted} == wanted, name


def test_created_topics_have_their_retention(broker: KafkaBroker) -> None:
    described = _described(broker)  # start_kafka ran ensure_topics on an empty broker
    _assert_configured(described)
    assert described[topics.VERDICTS]["cleanup.policy"] == "compact"
    assert described[topics.AUDIT]["cleanup.policy"] == "delete"
    assert described[topics.AUDIT]["retention.ms"] == "-1"
    assert described[topics.DLQ]["retention.ms"] == str(30 * 24 * 3600 * 1000)


def test_existing_topics_with_other_settings_are_brought_to_the_configs(broker: KafkaBroker) -> None:
    # As an earlier cxr-triage created them: no overrides, so the broker's 7-day delete policy applies.
    for name in (topics.STUDIES, topics.PREDICTIONS, topics.VERDICTS):
        _alter(
            broker,
            name,
            [
                ConfigEntry(key, None, incremental_operation=AlterConfigOpType.DELETE)
                for key in ("cleanup.policy", "retention.ms", "retention.bytes")
            ],
        )
    # An operator's hand: a short DLQ retention, and a setting cxr-triage does not manage, which must stay.
    _alter(
        broker,
        topics.DLQ,
        [
            ConfigEntry("retention.ms", "60000", incremental_operation=AlterConfigOpType.SET),
            ConfigEntry("max.message.bytes", "2000000", incremental_operation=AlterConfigOpType.SET),
        ],
    )
    before = _settled(
        broker,
        lambda d: (
            d[topics.VERDICTS]["cleanup.policy"] == "delete" and d[topics.DLQ]["retention.ms"] == "60000"
        ),
        "the altered configs",
    )
    assert before[topics.STUDIES]["retention.ms"] == BROKER_DEFAULT_RETENTION_MS

    ensure_topics(broker.settings)

    after = _settled(broker, lambda d: not config_drift(d), "ensure_topics's configs")
    _assert_configured(after)
    assert after[topics.DLQ]["max.message.bytes"] == "2000000"


def test_ensure_topics_twice_changes_nothing(broker: KafkaBroker, caplog: pytest.LogCaptureFixture) -> None:
    ensure_topics(broker.settings)
    before = _settled(broker, lambda d: not config_drift(d), "the configs")
    with caplog.at_level("INFO", logger="deploy.kafka_broker"):
        ensure_topics(broker.settings)
    assert _described(broker) == before
    assert not [r for r in caplog.records if r.getMessage() in ("created topic", "set topic configs")]


def test_a_deleted_topic_is_created_again_with_its_configs(broker: KafkaBroker) -> None:
    admin = kafka_admin(broker.bootstrap)
    for future in admin.delete_topics([topics.METRICS], operation_timeout=10).values():
        future.result(timeout=10)
    ensure_topics(broker.settings, timeout_s=60)
    _assert_configured(
        _settled(broker, lambda d: set(d) == set(topics.ALL) and not config_drift(d), "the configs")
    )
