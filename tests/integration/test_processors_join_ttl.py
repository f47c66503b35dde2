"""The join table stays bounded on the real processor: a settled study leaves it after the TTL (a changelog
tombstone, so a restart does not bring it back), and a late amendment for it goes to the DLQ saying why."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from cxr_triage import topics
from cxr_triage.events import DeadLetterEventV1
from tests.integration.processors_support import processor_stack, wait_for
from tests.processors_factories import T0, prediction, study, verdict

pytestmark = pytest.mark.integration


def test_a_settled_study_is_pruned_after_its_ttl_and_a_late_amendment_is_dead_lettered(
    tmp_path: Path,
) -> None:
    # A verdict may be read before its prediction (two topics, two agents): on a loaded machine the wait for
    # the prediction must not be the 2 s of the TTL, or the verdict itself is dead-lettered as unmatched.
    with processor_stack(tmp_path, join_settled_ttl_s="2", unmatched_verdict_wait_s="15") as (
        broker,
        processor,
        events,
    ):
        processor.start()
        for event_topic, event in (
            (topics.STUDIES, study("ttl-1")),
            (topics.PREDICTIONS, prediction("ttl-1")),
            (topics.VERDICTS, verdict("ttl-1")),
            (topics.STUDIES, study("ttl-unread")),
            (topics.PREDICTIONS, prediction("ttl-unread")),
        ):
            events.send(event_topic, event)
        events.flush()
        wait_for(lambda: processor.store.count() == 1, timeout_s=60, what="the feedback row")
        wait_for(
            lambda: processor.metric("cxr_processors_join_pruned_total") == 1,
            timeout_s=60,
            what="the settled study pruned (the unread one kept)",
        )
        # Restarted: the tombstone is in the changelog, so the recovered table does not hold it either.
        processor.stop()
        processor.start()
        amendment = verdict(
            "ttl-1",
            abnormal=False,
            kind="amendment",
            verdict_id="amend-ttl-1-0",
            decided_at=T0 + timedelta(days=9),
        )
        events.send(topics.VERDICTS, amendment)
        events.send(topics.VERDICTS, verdict("ttl-unread"))  # the unread study is still there: joins at once
        events.flush()
        [letter] = [
            DeadLetterEventV1.model_validate(d)
            for d in broker.read(topics.DLQ, lambda found: len(found) >= 1, timeout_s=60)
        ]
        assert letter.study_id == "ttl-1" and letter.error_type == "UnmatchedVerdict"
        assert "pruned" in letter.reason and "2 s" in letter.reason
        wait_for(lambda: processor.store.count() == 2, timeout_s=60, what="the unread study's verdict joined")
        rows = {r.event.study_id: r.event.verdict_id for r in processor.store.examples()}
        assert rows["ttl-1"] == verdict("ttl-1").verdict_id  # the amendment did not reach the store
