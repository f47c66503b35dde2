"""Shadow and canary scoring in the worker (fakes for Kafka, Triton and Redis: tests/unit/worker_rig.py)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from confluent_kafka import Message

from cxr_triage import topics
from cxr_triage.events import PredictionEventV1
from cxr_triage.imaging import decode_grayscale, resize_gray
from cxr_triage.labels import NUM_LABELS
from cxr_triage.model.contract import ModelContract
from cxr_triage.model.rollout import NONE, RolloutState, in_fraction
from cxr_triage.priority import priority
from inference_worker.publisher import Outgoing
from tests.unit.worker_rig import SIZE, FakeChallenger, Rig, png, study_message

SHADOW = RolloutState(mode="shadow", challenger_version="2", champion_version="1", fraction=1.0)
# the fake champion scores 0.1 on every label, the challenger 0.6
CHAMPION_PRIORITY = pytest.approx(priority(np.full(NUM_LABELS, 0.1, dtype=np.float32)))
CHALLENGER_PRIORITY = pytest.approx(priority(np.full(NUM_LABELS, 0.6, dtype=np.float32)))


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return Rig(tmp_path)


def ids_of(count: int, first: int = 0) -> list[str]:
    return [f"S-{i:04d}" for i in range(first, first + count)]


def messages(rig: Rig, ids: list[str], first_offset: int = 0) -> list[Message]:
    return [study_message(rig.store, study_id, first_offset + i) for i, study_id in enumerate(ids)]


def sent(rig: Rig) -> list[tuple[str | None, PredictionEventV1]]:
    out: list[Outgoing] = rig.publisher.of(topics.PREDICTIONS)
    return [(m.key, PredictionEventV1.model_validate(m.event.model_dump())) for m in out]


def by_role(rig: Rig, role: str) -> dict[str, PredictionEventV1]:
    return {p.study_id: p for _, p in sent(rig) if p.role == role}


def test_no_rollout_scores_with_the_champion_alone(rig: Rig) -> None:
    challenger = FakeChallenger(rig.journal, NONE)
    rig.worker(messages(rig, ids_of(3)), challenger=challenger).step()
    assert rig.journal == ["triton:3", "redis:3", "kafka:3", "published:3", "commit"]
    assert [(key, p.role, p.arm) for key, p in sent(rig)] == [(i, "serving", "champion") for i in ids_of(3)]
    assert all(entry.shadow is None for entry in rig.worklist.entries)
    assert rig.metric("cxr_worker_rollout_info", mode="none", challenger_version="", fraction="") == 1


def test_shadow_records_the_challenger_beside_and_leaves_the_order_to_the_champion(
    rig: Rig, tmp_path: Path
) -> None:
    ids = ids_of(6)
    plain = Rig(tmp_path / "plain")
    plain.worker(messages(plain, ids)).step()  # the same studies without a rollout
    challenger = FakeChallenger(rig.journal, SHADOW)
    report = rig.worker(messages(rig, ids), challenger=challenger).step()

    assert report is not None and report.scored == 6
    # one call per model, both before the durable write; one publish of both roles
    assert rig.journal == ["triton:6", "challenger:6", "redis:6", "kafka:12", "published:6", "commit"]
    serving, shadow = by_role(rig, "serving"), by_role(rig, "shadow")
    assert sorted(serving) == sorted(shadow) == ids
    # the worklist is exactly what it is without a shadow
    assert [(e.prediction.study_id, e.prediction.priority, e.tier) for e in rig.worklist.entries] == [
        (e.prediction.study_id, e.prediction.priority, e.tier) for e in plain.worklist.entries
    ]
    assert all(p.model_version == "1" and p.arm == "champion" for p in serving.values())
    assert all(p.priority == CHAMPION_PRIORITY for p in serving.values())
    assert all(p.model_version == "2" and p.arm == "champion" for p in shadow.values())
    assert all(p.priority == CHALLENGER_PRIORITY for p in shadow.values())
    keys = {p.study_id: key for key, p in sent(rig) if p.role == "shadow"}
    assert keys == {i: topics.shadow_key(i, "2") for i in ids}  # never the study id: compaction keeps both
    assert rig.metric("cxr_worker_challenger_latency_seconds_count", mode="shadow") == 1
    assert rig.metric("cxr_worker_triton_latency_seconds_count") == 1  # the champion's, apart
    assert rig.metric("cxr_worker_rollout_predictions_total", role="shadow", arm="champion") == 6
    assert rig.metric("cxr_worker_rollout_info", mode="shadow", challenger_version="2", fraction="1.0") == 1


def test_a_shadow_fraction_scores_the_hash_chosen_studies_only(rig: Rig) -> None:
    ids = ids_of(16)
    state = RolloutState(mode="shadow", challenger_version="2", fraction=0.5)
    rig.worker(messages(rig, ids), max_batch=16, challenger=FakeChallenger(rig.journal, state)).step()
    chosen = [i for i in ids if in_fraction(i, 0.5)]
    assert 0 < len(chosen) < len(ids)
    assert rig.journal[:2] == ["triton:16", f"challenger:{len(chosen)}"]
    assert sorted(by_role(rig, "shadow")) == chosen
    assert sorted(by_role(rig, "serving")) == ids


def test_canary_orders_the_hash_chosen_arm_by_the_challenger(rig: Rig) -> None:
    ids = ids_of(24)
    state = RolloutState(mode="canary", challenger_version="2", champion_version="1", fraction=0.3)
    challenger = FakeChallenger(rig.journal, state)
    rig.scorer.cams = np.full((NUM_LABELS, 2, 2), 0.5, dtype=np.float32)
    challenger.fake.cams = np.full((NUM_LABELS, 3, 3), 0.5, dtype=np.float32)
    rig.worker(messages(rig, ids), max_batch=24, challenger=challenger).step()

    canary = {i for i in ids if in_fraction(i, 0.3)}
    assert 0 < len(canary) < len(ids)
    assert rig.journal[:2] == ["triton:24", "challenger:24"]  # canary: both score every study (paired)
    serving, shadow = by_role(rig, "serving"), by_role(rig, "shadow")
    assert sorted(serving) == sorted(shadow) == ids
    for study_id in ids:
        arm = "canary" if study_id in canary else "champion"
        ordering, other = ("2", "1") if arm == "canary" else ("1", "2")
        assert (serving[study_id].arm, shadow[study_id].arm) == (arm, arm)
        assert serving[study_id].model_version == ordering and shadow[study_id].model_version == other
    stored = {e.prediction.study_id: e for e in rig.worklist.entries}
    for study_id in ids:
        entry = stored[study_id]
        assert entry.prediction == serving[study_id] and entry.shadow == shadow[study_id]
        expected = CHALLENGER_PRIORITY if study_id in canary else CHAMPION_PRIORITY
        assert entry.prediction.priority == expected
        assert entry.cams is not None and entry.cams.height == (3 if study_id in canary else 2)
    assert rig.metric("cxr_worker_rollout_predictions_total", role="serving", arm="canary") == len(canary)
    assert rig.metric("cxr_worker_rollout_predictions_total", role="serving", arm="champion") == 24 - len(
        canary
    )


def test_a_challenger_of_another_input_size_gets_its_own_tensors(rig: Rig) -> None:
    challenger = FakeChallenger(rig.journal, SHADOW, input_size=48)
    challenger.fake.served = ModelContract(input_size=48, version="2", operating_threshold=0.4)
    rig.worker(messages(rig, ids_of(2)), challenger=challenger).step()
    assert rig.scorer.shapes == [(2, 1, SIZE, SIZE)] and challenger.fake.shapes == [(2, 1, 48, 48)]
    shadow = by_role(rig, "shadow")
    assert {p.threshold for p in shadow.values()} == {0.4}  # the challenger's own contract
    assert {p.threshold for p in by_role(rig, "serving").values()} == {None}


def test_challenger_tensor_is_resized_from_the_decoded_image(rig: Rig) -> None:
    from inference_worker.batching import prepare_one
    from inference_worker.records import Record

    message = study_message(rig.store, "S-1", 0)
    prepared = prepare_one(Record.from_message(message), store=rig.store, input_size=SIZE, keep_source=True)
    expected = resize_gray(decode_grayscale(png(0)), 48)
    assert np.array_equal(prepared.tensor_at(48), expected)  # type: ignore[union-attr]
    assert prepared.tensor_at(SIZE) is prepared.tensor  # type: ignore[union-attr]


@pytest.mark.parametrize("mode", ["shadow", "canary"])
def test_a_failing_challenger_never_holds_the_worklist(rig: Rig, mode: str) -> None:
    state = RolloutState(mode=mode, challenger_version="2", fraction=0.5)  # type: ignore[arg-type]
    challenger = FakeChallenger(rig.journal, state)
    challenger.fake.failures = 1
    ids = ids_of(8)
    report = rig.worker(messages(rig, ids), challenger=challenger).step()
    assert report is not None and report.scored == 8
    assert rig.consumer is not None and len(rig.consumer.commits) == 1
    serving = by_role(rig, "serving")
    assert sorted(serving) == ids and by_role(rig, "shadow") == {}
    assert all(
        p.model_version == "1" and p.arm == "champion" for p in serving.values()
    )  # recorded truthfully
    assert rig.metric("cxr_worker_challenger_failures_total", mode=mode) == 1
    assert challenger.invalidated == 1  # the state and contract are read again for the next batch


def test_a_challenger_answering_as_another_version_is_not_recorded(rig: Rig) -> None:
    challenger = FakeChallenger(rig.journal, SHADOW)
    challenger.fake.version = "3"  # Triton switched the challenger; the cached rollout still names 2
    rig.worker(messages(rig, ids_of(2)), challenger=challenger).step()
    assert by_role(rig, "shadow") == {} and sorted(by_role(rig, "serving")) == ids_of(2)
    assert challenger.invalidated == 1


def test_a_replay_under_another_rollout_republishes_the_first_predictions(rig: Rig) -> None:
    """Shadow, then (the commit lost) the same batch again in canary: nothing re-scored or re-armed."""
    ids = ids_of(12)
    challenger = FakeChallenger(rig.journal, SHADOW)
    worker = rig.worker(messages(rig, ids), max_batch=12, challenger=challenger)
    worker.step()
    first = sent(rig)
    assert rig.consumer is not None
    rig.consumer.next[0] = 0  # the commit was lost: the batch is delivered again
    rig.worklist.stored = {i: replace(o, published=False) for i, o in rig.worklist.stored.items()}
    challenger.rollout = RolloutState(mode="canary", challenger_version="2", fraction=0.5)
    rig.publisher.sent.clear()
    report = worker.step()
    assert report is not None and (report.scored, report.unchanged) == (0, 12)
    assert sorted(sent(rig), key=lambda kp: kp[0] or "") == sorted(first, key=lambda kp: kp[0] or "")
    assert all(p.arm == "champion" for _, p in sent(rig))  # the arm decided first stays


def test_a_study_first_scored_without_shadow_gets_none_on_replay(rig: Rig) -> None:
    challenger = FakeChallenger(rig.journal, NONE)
    worker = rig.worker(messages(rig, ids_of(3)), challenger=challenger)
    worker.step()
    assert rig.consumer is not None
    rig.consumer.next[0] = 0
    rig.worklist.stored = {i: replace(o, published=False) for i, o in rig.worklist.stored.items()}
    challenger.rollout = SHADOW
    rig.publisher.sent.clear()
    worker.step()
    assert [(p.role, p.model_version) for _, p in sent(rig)] == [("serving", "1")] * 3
