"""Which topic configs `ensure_topics` sets again: those of ``topics.CONFIGS`` a topic does not have."""

from __future__ import annotations

from cxr_triage import topics
from deploy.kafka_broker import config_drift


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
