"""The real processor on a private broker: serving and shadow predictions and verdicts in, paired metrics on
/metrics and a decision on cxr.model-decisions.v1 out. Two challengers in shadow beside champion 1: version 2
has shuffled outputs (not promoted), version 3 reads the studies better (promoted)."""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from confluent_kafka import Producer

from cxr_triage import topics
from cxr_triage.events import ModelDecisionEventV1, PredictionEventV1
from cxr_triage.kafka_config import producer_config
from tests.integration.processors_support import processor_stack, wait_for
from tests.processors_factories import T0, prediction, study, verdict

pytestmark = pytest.mark.integration

STUDIES = 120


def _shadow(study_id: str, priority: float, version: str) -> PredictionEventV1:
    scored = prediction(study_id, priority=priority, version=version, scored_at=T0 + timedelta(seconds=4))
    return scored.model_copy(update={"role": "shadow"})


def test_shadow_challengers_are_compared_on_the_same_verdicts_and_only_the_good_one_is_promoted(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(3)
    truth = rng.random(STUDIES) < 0.4
    sign = np.where(truth, 1, -1)
    champion = np.clip(0.5 + 0.2 * sign + rng.normal(0, 0.2, STUDIES), 0, 1)
    shuffled = rng.permutation(champion)
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

        processor.start()
        for i in range(STUDIES):
            sid = f"r{i:03d}"
            events.send(topics.STUDIES, study(sid))
            if i % 3 == 0:
                # Shadows before the serving prediction; the rest after the verdict (the example re-published).
                send_shadow(_shadow(sid, float(shuffled[i]), "2"))
                send_shadow(_shadow(sid, float(better[i]), "3"))
            events.send(topics.PREDICTIONS, prediction(sid, priority=float(champion[i])))
            events.send(topics.VERDICTS, verdict(sid, abnormal=bool(truth[i])))
        events.flush()
        for i in range(STUDIES):
            if i % 3 != 0:
                sid = f"r{i:03d}"
                send_shadow(_shadow(sid, float(shuffled[i]), "2"))
                send_shadow(_shadow(sid, float(better[i]), "3"))
        assert shadows.flush(30) == 0

        found = broker.read(topics.MODEL_DECISIONS, lambda found: len(found) >= 1, timeout_s=180)
        [decision] = [ModelDecisionEventV1.model_validate(d) for d in found]
        assert (decision.action, decision.mode, decision.champion_version, decision.challenger_version) == (
            "promote",
            "shadow",
            "1",
            "3",
        )
        assert decision.paired_studies >= 100 and found[0]["_key"] == "3"

        store = processor.store
        # Every serving prediction stayed the example's; every example ends up with both shadows.
        wait_for(
            lambda: store.count() == STUDIES and len(store.scored_by_all(("1", "2", "3"))) == STUDIES,
            timeout_s=120,
            what="every example paired with both shadows",
        )
        assert {row.event.model_version for row in store.examples()} == {"1"}
        assert [row.seq for row in store.examples()] == list(range(1, STUDIES + 1))

        def settled_on_all() -> bool:
            return processor.metric(
                "cxr_rollout_paired_studies", champion_version="1", challenger_version="2", mode="shadow"
            ) == float(STUDIES)

        wait_for(settled_on_all, timeout_s=60, what="version 2's paired metrics on all studies")
        assert processor.metric("cxr_rollout_decision", challenger_version="2", action="keep_waiting") == 1
        assert processor.metric("cxr_rollout_auroc_difference", challenger_version="2", bound="ci_high") < 0
        assert processor.metric("cxr_rollout_decisions_total", action="promote") == 1
        stats = processor.stats()
        assert stats["by_model_version"] == {"1": STUDIES}
        assert stats["rollout"]["challengers"]["2"]["action"] == "keep_waiting"
        assert stats["rollout"]["decisions"]["3"]["published"] is True
        # Still only the one decision: the shuffled challenger is never promoted.
        assert len(broker.read(topics.MODEL_DECISIONS, lambda found: False, timeout_s=3)) == 1
