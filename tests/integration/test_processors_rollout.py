"""The real processor on a private broker: operators' decisions, serving and shadow predictions and verdicts
in, paired metrics on /metrics and a decision on cxr.model-decisions.v1 out. Two challengers scored the studies
in shadow beside champion 1, both better than it: version 2's shadow was stopped by the operator (never
judged, so never promoted), version 3's was started after it (promoted)."""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from confluent_kafka import Producer

from cxr_triage import topics
from cxr_triage.events import DecisionAction, ModelDecisionEventV1, PredictionEventV1
from cxr_triage.feedback.rollout import read_rollout
from cxr_triage.kafka_config import producer_config
from tests.integration.processors_support import processor_stack, wait_for
from tests.processors_factories import T0, prediction, study, verdict

pytestmark = pytest.mark.integration

STUDIES = 120


def _shadow(study_id: str, priority: float, version: str) -> PredictionEventV1:
    scored = prediction(study_id, priority=priority, version=version, scored_at=T0 + timedelta(seconds=4))
    return scored.model_copy(update={"role": "shadow"})


def _operator(action: DecisionAction, challenger: str, hours_before: int) -> ModelDecisionEventV1:
    return ModelDecisionEventV1(
        decision_id=uuid.uuid4().hex,
        action=action,
        mode="shadow",
        champion_version="1",
        challenger_version=challenger,
        fraction=1.0,
        decided_by="operator",
        decided_at=T0 - timedelta(hours=hours_before),
    )


def test_only_the_shadow_the_operator_left_running_is_judged_and_promoted(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(3)
    truth = rng.random(STUDIES) < 0.4
    sign = np.where(truth, 1, -1)
    champion = np.clip(0.5 + 0.2 * sign + rng.normal(0, 0.2, STUDIES), 0, 1)
    stopped = np.clip(0.5 + 0.3 * sign + rng.normal(0, 0.08, STUDIES), 0, 1)
    better = np.clip(0.5 + 0.3 * sign + rng.normal(0, 0.08, STUDIES), 0, 1)
    settings = {
        "rollout_min_paired": "100",
        "rollout_min_per_class": "20",
        "rollout_bootstrap_resamples": "1000",
    }
    with processor_stack(tmp_path, **settings) as (broker, processor, events):
        shadows = Producer(producer_config(broker.settings, client_id=f"test-{uuid.uuid4().hex[:6]}"))

        def send_shadow(event: PredictionEventV1) -> None:
            key = topics.shadow_key(event.study_id, event.model_version)
            shadows.produce(topics.PREDICTIONS, key=key.encode(), value=event.to_bytes())
            shadows.poll(0)

        for decision in (
            _operator("shadow_started", "2", 3),
            _operator("stopped", "2", 2),
            _operator("shadow_started", "3", 1),
        ):
            shadows.produce(
                topics.MODEL_DECISIONS, key=decision.challenger_version.encode(), value=decision.to_bytes()
            )
        assert shadows.flush(30) == 0
        processor.start()

        def judged() -> str | None:
            current = read_rollout(processor.store).current
            return None if current is None else current.challenger_version

        # Before any study: the operators' decisions are what the processor judges by.
        wait_for(lambda: judged() == "3", timeout_s=120, what="version 3's shadow followed")
        for i in range(STUDIES):
            sid = f"r{i:03d}"
            events.send(topics.STUDIES, study(sid))
            if i % 3 == 0:
                # Shadows before the serving prediction; the rest after the verdict (the example re-published).
                send_shadow(_shadow(sid, float(stopped[i]), "2"))
                send_shadow(_shadow(sid, float(better[i]), "3"))
            events.send(topics.PREDICTIONS, prediction(sid, priority=float(champion[i])))
            events.send(topics.VERDICTS, verdict(sid, abnormal=bool(truth[i])))
        events.flush()
        for i in range(STUDIES):
            if i % 3 != 0:
                sid = f"r{i:03d}"
                send_shadow(_shadow(sid, float(stopped[i]), "2"))
                send_shadow(_shadow(sid, float(better[i]), "3"))
        assert shadows.flush(30) == 0

        found = broker.read(
            topics.MODEL_DECISIONS,
            lambda found: any(d["decided_by"] == "policy" for d in found),
            timeout_s=180,
        )
        [decision] = [ModelDecisionEventV1.model_validate(d) for d in found if d["decided_by"] == "policy"]
        assert (decision.action, decision.mode, decision.champion_version, decision.challenger_version) == (
            "promote",
            "shadow",
            "1",
            "3",
        )
        assert decision.paired_studies >= 100 and decision.fraction == 1.0

        store = processor.store
        # Every serving prediction stayed the example's; every example ends up with both shadows.
        wait_for(
            lambda: store.count() == STUDIES and len(store.scored_by_all(("1", "2", "3"))) == STUDIES,
            timeout_s=120,
            what="every example paired with both shadows",
        )
        assert {row.event.model_version for row in store.examples()} == {"1"}
        assert [row.seq for row in store.examples()] == list(range(1, STUDIES + 1))

        stats = processor.stats()
        assert stats["by_model_version"] == {"1": STUDIES}
        assert stats["rollout"]["decisions"]["3"]["published"] is True
        assert stats["rollout"]["decisions"]["3"]["fraction"] == 1.0
        # Promoted: the rollout ends; the stopped version 2 was never judged, on /metrics or in the store.
        assert stats["rollout"]["current"] is None and set(stats["rollout"]["challengers"]) == {"3"}
        assert processor.metric("cxr_rollout_paired_studies", challenger_version="2") == 0
        assert processor.metric("cxr_rollout_decisions_total", action="promote") == 1
        # The operators' three decisions and the policy's one: version 2, as good as 3, is never promoted.
        found = broker.read(topics.MODEL_DECISIONS, lambda found: False, timeout_s=3)
        policy = [d for d in found if d["decided_by"] == "policy"]
        assert len(found) == 4 and [d["challenger_version"] for d in policy] == ["3"]
