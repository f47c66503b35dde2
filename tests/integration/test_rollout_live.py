"""Shadow, then canary, then stop, mid-stream, on a real stack (Kafka, Redis, Triton, one worker).

The champion is the untrained 224-px model (version 1); the challenger a 128-px export with another seed
(version 2: other scores, other input size, its own threshold). Studies stream at a steady rate while an
operator runs ``cxr-triage model shadow 2``, ``model canary 2 --fraction 0.5`` and ``model rollout stop``.
Afterwards, per study (one worker, one partition: processed in publish order):

- exactly one serving prediction (a replay may republish it, identical) and at most one shadow one (keyed
  ``shadow_key``), none lost; the worklist holds every study once, at its serving prediction's priority, and
  the study hash records its arm;
- a champion-arm serving prediction is version 1's own score of the image (so shadow scoring leaves the order
  as it is without it); a canary-arm one is version 2's own score at 128 px, and its shadow is version 1's;
- while the canary is in force every study's arm is the one the stable hash gives (or, if the challenger
  could not answer, the champion orders it alone and says so);
- after ``rollout stop`` the champion scores alone again; the three operator decisions are on
  ``cxr.model-decisions.v1``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import numpy as np
import onnxruntime as ort
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from cxr_triage import topics
from cxr_triage.events import ModelDecisionEventV1, PredictionEventV1
from cxr_triage.imaging import decode_grayscale, resize_gray
from cxr_triage.labels import LABELS
from cxr_triage.model.export import build_densenet121, export_model
from cxr_triage.model.repository import ONNX_FILE, add_version, model_dir
from cxr_triage.model.rollout import challenger_name, in_fraction
from cxr_triage.redis_client import open_redis
from cxr_triage.settings import Settings
from cxr_triage.worklist.keys import WorklistKeys
from tests.integration.streaming import (
    Stream,
    StreamStack,
    _http_ok,
    make_studies,
    running_stream_stack,
    wait_for,
    wait_until_committed,
)

pytestmark = pytest.mark.integration

FRACTION = 0.5
CHALLENGER_CONTRACT = {"cxr.threshold": "0.35", "cxr.tier.urgent": "0.35", "cxr.tier.critical": "0.8"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StreamStack]:
    env = {"CXR_KAFKA_PARTITIONS": "1", "CXR_WORKER_ROLLOUT_REFRESH_S": "1"}
    with running_stream_stack(tmp_path_factory, "rollout", workers=1, env=env) as s:
        yield s


def offline(settings: Settings, version: str, image: bytes) -> np.ndarray:
    session = ort.InferenceSession(
        str(model_dir(settings) / version / ONNX_FILE), providers=["CPUExecutionProvider"]
    )
    size = int(session.get_inputs()[0].shape[-1])
    pixels = resize_gray(decode_grayscale(image), size)[None]
    return np.asarray(session.run(["probabilities"], {"image": pixels})[0][0])


def all_predictions(settings: Settings) -> list[tuple[str, PredictionEventV1]]:
    return [
        (key, PredictionEventV1.from_bytes(value)) for key, value in read_topic(settings, topics.PREDICTIONS)
    ]


def read_topic(settings: Settings, topic: str) -> list[tuple[str, bytes]]:
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap_servers,
            "group.id": f"test-read-{uuid.uuid4()}",
            "enable.auto.commit": False,
        }
    )
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions
        }
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        out: list[tuple[str, bytes]] = []
        left = {p for p, end in ends.items() if end > 0}
        while left:
            message = consumer.poll(10)
            assert message is not None, f"could not read {topic} to its end"
            if message.error() is not None:
                continue
            out.append(((message.key() or b"").decode(), message.value() or b""))
            if (message.offset() or 0) + 1 >= ends[message.partition() or 0]:
                left.discard(message.partition() or 0)
        return out
    finally:
        consumer.close()


def shadows_seen(settings: Settings) -> int:  # the worker scores in shadow once this is > 0
    return sum(p.role == "shadow" for _, p in all_predictions(settings))


def test_shadow_canary_stop_mid_stream(stack: StreamStack) -> None:
    settings = stack.settings
    exported = export_model(
        build_densenet121(seed=5), stack.folder / "v2.onnx", input_size=128, metadata=CHALLENGER_CONTRACT
    )
    assert add_version(settings, exported, metadata={"source": "test"}) == 2
    ready = f"{settings.triton_http_url}/v2/models/{challenger_name(settings.model_name)}/ready"

    before = Stream(stack, make_studies(stack.folder, first=0, count=4), per_s=2).start().join()
    stack.stack.cli("model", "shadow", "2")
    wait_for("Triton to load the challenger", lambda: _http_ok(ready), 120)
    # Long enough that the canary, switched on by a CLI that takes seconds on a loaded machine, still
    # finds studies to order (with 50, CI once saw the stream end first).
    studies = make_studies(stack.folder, first=100, count=100)
    stream = Stream(stack, studies, per_s=2).start()
    wait_for("the worker to score in shadow", lambda: shadows_seen(settings) > 0, 90)
    stream.wait_for(12, timeout_s=60)
    stack.stack.cli("model", "canary", "2", "--fraction", str(FRACTION))
    wait_for(
        "the worker to order a study by the canary",
        lambda: any(p.arm == "canary" for _, p in all_predictions(settings)),
        90,
    )
    stream.wait_for(min(len(stream.published) + 14, len(studies)), timeout_s=60)
    stack.stack.cli("model", "rollout", "stop")
    wait_for("Triton to unload the challenger", lambda: not _http_ok(ready), 90)
    during = stream.join()
    wait_until_committed(settings)
    seen_after_stop = len(all_predictions(settings))
    after = Stream(stack, make_studies(stack.folder, first=300, count=4), per_s=2).start().join()
    ids = before + during + after
    wait_until_committed(settings)

    serving: dict[str, list[PredictionEventV1]] = {}
    shadow: dict[str, list[PredictionEventV1]] = {}
    for key, p in all_predictions(settings):
        if p.role == "serving":
            assert key == p.study_id
            serving.setdefault(p.study_id, []).append(p)
        else:
            assert key == topics.shadow_key(p.study_id, p.model_version)
            shadow.setdefault(p.study_id, []).append(p)
    client = open_redis(settings, decode_responses=True)
    keys = WorklistKeys(settings.redis_key_prefix)
    try:
        assert client.zcard(keys.worklist) == len(ids)
        for study_id in ids:
            events = serving.get(study_id, [])
            assert events and all(e == events[0] for e in events), f"{study_id}: {events}"
            assert len({json.dumps(s.model_dump(mode="json")) for s in shadow.get(study_id, [])}) <= 1
            first = events[0]
            assert client.zscore(keys.worklist, study_id) == first.priority
            stored = client.hgetall(keys.study(study_id))
            assert stored["arm"] == first.arm and stored["model_version"] == first.model_version
    finally:
        client.close()

    # no rollout before and after: the champion alone
    for study_id in before + after:
        assert serving[study_id][0].model_version == "1" and study_id not in shadow
    assert all(p.role == "serving" for _, p in all_predictions(settings)[seen_after_stop:])

    # the canary window (processed in order): every study's arm is the hash's, or the champion alone
    arms = [serving[s][0].arm for s in during]
    assert "canary" in arms, arms
    start, end = arms.index("canary"), len(arms) - 1 - arms[::-1].index("canary")
    for study_id in during[start : end + 1]:
        first = serving[study_id][0]
        if study_id not in shadow:  # the challenger could not answer: the champion ordered it, and says so
            assert first.arm == "champion" and first.model_version == "1"
            continue
        expected = "canary" if in_fraction(study_id, FRACTION) else "champion"
        assert first.arm == expected == shadow[study_id][0].arm, study_id
    assert any(a == "champion" and s in shadow for a, s in zip(arms, during, strict=True))  # shadow or canary

    # each prediction is its own model's score of the image (the challenger at its own 128 px)
    images = {s.study_id: s.data for s in studies}
    checked = {"1": 0, "2": 0}
    for study_id in during:
        for p in serving[study_id][:1] + shadow.get(study_id, [])[:1]:
            if checked[p.model_version] >= 3:
                continue
            reference = offline(settings, p.model_version, images[study_id])
            got = np.array([p.probabilities[label] for label in LABELS])
            assert np.abs(got - reference).max() < 1e-4, (study_id, p.model_version, p.role)
            checked[p.model_version] += 1
    assert checked == {"1": 3, "2": 3}
    assert {p.threshold for s in during for p in shadow.get(s, []) if p.model_version == "2"} <= {0.35}

    champion_s = stack.worker_metric("cxr_worker_triton_latency_seconds_sum", 0)
    champion_n = stack.worker_metric("cxr_worker_triton_latency_seconds_count", 0)
    challenger_s = sum(
        stack.worker_metric("cxr_worker_challenger_latency_seconds_sum", 0, mode=m)
        for m in ("shadow", "canary")
    )
    challenger_n = sum(
        stack.worker_metric("cxr_worker_challenger_latency_seconds_count", 0, mode=m)
        for m in ("shadow", "canary")
    )
    print(
        f"studies {len(ids)}: arms {arms.count('canary')} canary / {arms.count('champion')} champion during; "
        f"with shadow {len(shadow)}; canary window {end - start + 1}; challenger failures "
        f"{stack.worker_metric('cxr_worker_challenger_failures_total', 0):g}; mean call champion "
        f"{champion_s / max(champion_n, 1):.3f} s ({champion_n:g}), challenger "
        f"{challenger_s / max(challenger_n, 1):.3f} s ({challenger_n:g})"
    )
    decisions = [ModelDecisionEventV1.from_bytes(v) for _, v in read_topic(settings, topics.MODEL_DECISIONS)]
    assert [(d.action, d.challenger_version, d.decided_by) for d in decisions] == [
        ("shadow_started", "2", "operator"),
        ("canary_started", "2", "operator"),
        ("stopped", "2", "operator"),
    ]
