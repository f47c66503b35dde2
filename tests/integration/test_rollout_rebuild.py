"""The worklist rebuilt from Kafka during a rollout: serving predictions order it, shadows come back beside them.

On a private Redis: the worker's writes of studies scored in shadow and canary (serving + shadow predictions,
canary-arm studies ordered by the challenger) against the rebuild's from the same events, in any partition
order (a shadow prediction is keyed by study and version, so it may precede its serving one). Equal state,
shadow keys and arms included; applying twice changes nothing.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import redis

from cxr_triage.events import PredictionEventV1, StudyEventV1
from cxr_triage.labels import LABELS
from cxr_triage.model.rollout import RolloutState
from cxr_triage.sla import SlaPolicy
from cxr_triage.worklist.keys import WorklistKeys
from cxr_triage.worklist.rebuild import Projection, apply
from inference_worker.worklist import RedisWorklist, WorklistEntry
from tests.integration.conftest import RedisServer
from tests.integration.rebuild_support import snapshot

pytestmark = pytest.mark.integration

POLICY = SlaPolicy()
T0 = datetime.now(UTC) - timedelta(minutes=30)
CANARY = RolloutState(mode="canary", challenger_version="2", champion_version="1", fraction=0.4)


@pytest.fixture()
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_server.url, decode_responses=True)
    yield c
    c.close()


def _prediction(study: StudyEventV1, version: str, priority: float) -> PredictionEventV1:
    return PredictionEventV1(
        study_id=study.study_id,
        model_name="cxr_classifier",
        model_version=version,
        probabilities={label: priority for label in LABELS},
        priority=priority,
        received_at=study.received_at,
        scored_at=study.received_at + timedelta(seconds=1),
        tier=POLICY.tier_for(priority),
        threshold=0.3 if version == "2" else None,
    )


def _entry(i: int, state: RolloutState | None) -> WorklistEntry:
    sha = f"{i:064x}"
    study = StudyEventV1(
        study_id=f"r{i:03d}",
        image_uri=f"file:///images/{sha}.png",
        sha256=sha,
        content_type="image/png",
        size_bytes=10,
        received_at=T0 + timedelta(seconds=i),
    )
    champion = _prediction(study, "1", (i * 37 % 100) / 100)
    if state is None:
        return WorklistEntry(study, champion)
    challenger = _prediction(study, "2", (i * 53 % 100) / 100)
    arm = state.arm(study.study_id)
    serving, shadow = (challenger, champion) if arm == "canary" else (champion, challenger)
    return WorklistEntry(
        study,
        serving.model_copy(update={"arm": arm}),
        shadow=shadow.model_copy(update={"role": "shadow", "arm": arm}),
    )


def test_rebuild_restores_serving_order_arms_and_shadows(client: redis.Redis) -> None:
    shadow_mode = RolloutState(mode="shadow", challenger_version="2", fraction=1.0)
    entries = (
        [_entry(i, None) for i in range(10)]
        + [_entry(i, shadow_mode) for i in range(10, 20)]
        + [_entry(i, CANARY) for i in range(20, 50)]
    )
    assert {e.prediction.arm for e in entries} == {"champion", "canary"}
    live = WorklistKeys(f"live{uuid.uuid4().hex[:6]}")
    worker = RedisWorklist(client, live, policy=POLICY)
    worker.write(entries)
    worker.mark_published([e.prediction.study_id for e in entries])

    events: list[StudyEventV1 | PredictionEventV1] = []
    for entry in entries:
        events += [entry.study, entry.prediction]
        if entry.shadow is not None:
            events += [entry.shadow, entry.shadow]  # republished identical by a replay
    random.Random(7).shuffle(events)  # partitions interleave any way; a study's serving ones stay in order
    projection = Projection()
    for event in events:
        if isinstance(event, StudyEventV1):
            projection.add_study(event)
        else:
            projection.add_prediction(event)
    rebuilt = WorklistKeys(f"rebuilt{uuid.uuid4().hex[:6]}")
    apply(client, keys=rebuilt, policy=POLICY, projection=projection)

    expected = snapshot(client, live.prefix)
    assert snapshot(client, rebuilt.prefix) == expected
    assert sum(name.startswith("shadow:") for name in expected) == 40
    assert expected["worklist"] == {e.prediction.study_id: e.prediction.priority for e in entries}
    canary = [e for e in entries if e.prediction.arm == "canary"]
    assert canary and all(expected[f"study:{e.study.study_id}"]["model_version"] == "2" for e in canary)
    assert all(expected[f"study:{e.study.study_id}"]["arm"] == "canary" for e in canary)
    apply(client, keys=rebuilt, policy=POLICY, projection=projection)
    assert snapshot(client, rebuilt.prefix) == expected
