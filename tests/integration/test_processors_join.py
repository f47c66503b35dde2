"""The real processor on a real broker: verdicts joined in either order, amendments, unknown studies to the DLQ,
the store, ``feedback stats`` and the online metrics on /metrics."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from cxr_triage import topics
from cxr_triage.events import DeadLetterEventV1, MetricsEventV1, VerdictEventV1
from tests.integration.processors_support import processor_stack, wait_for
from tests.processors_factories import T0, prediction, study, verdict

pytestmark = pytest.mark.integration


def test_verdicts_before_and_after_their_prediction_amendments_and_unknown_studies(tmp_path: Path) -> None:
    with processor_stack(tmp_path, unmatched_verdict_wait_s="10") as (broker, processor, events):
        processor.start()
        # s-after: study and prediction first, then the verdict. s-before: the verdict first.
        for event_topic, event in (
            (topics.STUDIES, study("s-after")),
            (topics.PREDICTIONS, prediction("s-after", priority=0.9)),
            (topics.VERDICTS, verdict("s-after", abnormal=True)),
            (topics.VERDICTS, verdict("s-before", abnormal=False)),
            (topics.VERDICTS, verdict("s-unknown")),
        ):
            events.send(event_topic, event)
        events.flush()
        store = processor.store
        wait_for(
            lambda: store.count() == 1, timeout_s=60, what="the verdict after its prediction in the store"
        )
        events.send(topics.PREDICTIONS, prediction("s-before", priority=0.2))
        events.send(topics.STUDIES, study("s-before"))
        events.flush()
        wait_for(
            lambda: store.count() == 2, timeout_s=30, what="the verdict before its prediction in the store"
        )
        rows = {row.event.study_id: row.event for row in store.examples()}
        assert (rows["s-after"].abnormal, rows["s-after"].priority) == (1, 0.9)
        assert (rows["s-before"].abnormal, rows["s-before"].priority) == (0, 0.2)

        # The unknown study's verdict goes to the DLQ after the configured wait, with its reason.
        dead = broker.read(topics.DLQ, lambda found: len(found) >= 1, timeout_s=60)
        [letter] = [DeadLetterEventV1.model_validate(d) for d in dead]
        assert letter.stage == "processor" and letter.study_id == "s-unknown"
        assert "unmatched" in letter.reason and letter.error_type == "UnmatchedVerdict"
        assert VerdictEventV1.model_validate_json(letter.original or "").study_id == "s-unknown"

        # An amendment replaces that radiologist's example (one row, the new labels, a new seq).
        old_seq = next(row.seq for row in store.examples() if row.event.study_id == "s-after")
        amendment = verdict(
            "s-after",
            abnormal=False,
            kind="amendment",
            verdict_id="amend-s-after-1",
            decided_at=T0 + timedelta(hours=1),
        )
        events.send(topics.VERDICTS, amendment)
        events.flush()
        amended = wait_for(
            lambda: [r for r in store.examples() if r.event.verdict_id == "amend-s-after-1"],
            timeout_s=30,
            what="the amendment in the store",
        )
        assert store.count() == 2 and amended[0].seq > old_seq and amended[0].event.abnormal == 0

        feedback = broker.read(topics.FEEDBACK, lambda found: len(found) >= 3)
        assert {f["_key"] for f in feedback} == {
            topics.verdict_key("s-after", "dr-a"),
            topics.verdict_key("s-before", "dr-a"),
        }

        stats = processor.stats()
        assert stats["total"] == 2 and stats["by_model_version"] == {"1": 2}
        assert stats["unmatched_waiting"] == 0 and stats["dead_lettered"] == 1
        assert stats["training_requests"] == {**stats["training_requests"], "pending": 0, "handled": 0}

        # Online metrics for the version, on /metrics and as events (one abnormal, one normal: AUROC defined).
        wait_for(
            lambda: processor.metric("cxr_online_examples", model_version="1", window="sliding") == 2,
            timeout_s=30,
            what="online metrics on /metrics",
        )
        published = broker.read(
            topics.METRICS,
            lambda found: any(m["examples"] == 2 and m["window"] == "since_promotion" for m in found),
        )
        latest = [MetricsEventV1.model_validate(m) for m in published if m["examples"] == 2]
        assert {m.window for m in latest} == {"sliding", "since_promotion"}
        assert all(m.model_version == "1" and m.auroc_abnormal is not None for m in latest)
        assert processor.metric("cxr_processors_dead_lettered_total", reason="unmatched_verdict") == 1
        assert "s-after" not in (processor.metrics_text() or "")
