"""Studies stream through the real stack while it is hurt: Triton killed, Redis killed, a worker killed, the
served model version switched. After each, every produced study is on the worklist exactly once.

One private stack (Kafka, Redis, Triton, two workers in one consumer group; no API) serves the whole module.
Each test publishes its own distinct studies (a single pixel changed per image, so the content-derived study
ids differ) through the real producer code at a steady rate, injects its fault mid-stream, waits until the
workers' group has committed every study, and then checks Redis and ``cxr.predictions.v1``:

- each study is in the ``worklist`` sorted set and in exactly one SLA tier, and the cardinality of the set is
  the number of distinct studies the module has produced;
- its hash holds the first prediction published for it, and any prediction published again for it (a replay
  after a crash) is identical: nothing was scored twice.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import pytest

from cxr_triage.model.export import build_densenet121, export_model
from cxr_triage.model.repository import add_version, serve_version
from tests.integration.streaming import (
    Stream,
    StreamStack,
    _http_ok,
    assert_each_once_on_the_worklist,
    make_studies,
    running_stream_stack,
    wait_for,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stream_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StreamStack]:
    env = {"CXR_INITIAL_MODEL_INPUT_SIZE": "64", "CXR_KAFKA_PARTITIONS": "4"}
    with running_stream_stack(tmp_path_factory, "stream", workers=2, env=env) as started:
        yield started


def test_triton_killed_mid_stream_and_restarted(stream_stack: StreamStack) -> None:
    studies = make_studies(stream_stack.folder, first=0, count=40)
    before = stream_stack.failures("triton")
    stream = Stream(stream_stack, studies, per_s=4).start()
    stream.wait_for(8)
    stream_stack.kill("triton")
    # Restart only once a worker has failed a batch on it: the fault is proven to have hit the stream.
    wait_for("a batch to fail on Triton", lambda: stream_stack.failures("triton") > before)
    stream_stack.up()
    published = stream.join()
    assert len(published) == 40
    assert_each_once_on_the_worklist(stream_stack, published, republish_allowed=True)


def test_redis_killed_mid_stream_and_restarted(stream_stack: StreamStack) -> None:
    studies = make_studies(stream_stack.folder, first=1000, count=40)
    before = stream_stack.failures("redis")
    stream = Stream(stream_stack, studies, per_s=4).start()
    stream.wait_for(8)
    stream_stack.kill("redis")
    wait_for("a batch to fail on Redis", lambda: stream_stack.failures("redis") > before)
    stream_stack.up()  # the append-only file brings back every acknowledged write
    published = stream.join()
    assert_each_once_on_the_worklist(stream_stack, published, republish_allowed=True)


def hold_a_batch_of_worker_1(
    target: StreamStack, component: str, *, stage: str, hold_s: float, attempts: int = 20
) -> None:
    """Freeze ``component`` (SIGSTOP) while worker-1 is inside a batch, until that batch waits on it.

    Worker-1's ``cxr_worker_stage`` says where its batch is: freeze once a batch is in flight, and keep the
    freeze once the batch has reached ``stage`` (the call to the frozen component) and is still there
    ``hold_s`` later; else thaw and retry. Counting writes instead raced on a loaded machine: the write seen
    could be the batch before, already published, while the one in hand was still in Triton.
    """

    def at_stage() -> bool:
        return target.worker_metric("cxr_worker_stage", 1, cxr_worker_stage=stage) > 0

    for _ in range(attempts):
        wait_for(
            "worker-1 to take a batch",
            lambda: target.worker_metric("cxr_worker_in_flight", 1) > 0,
            timeout_s=60,  # after a thaw, worker-1 may have to rejoin the group first
        )
        target.freeze(component, frozen=True)
        # At most ~10 s frozen per try: longer, and the worker's 10 s session and the stream's 30 s delivery
        # timeout expire under a frozen Kafka; a batch that is slower than that is let go, and the next one tried.
        deadline = time.monotonic() + 8.0
        while not at_stage() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(hold_s)
        if at_stage():
            return
        target.freeze(component, frozen=False)
    raise AssertionError(f"worker-1 never held a batch on a frozen {component}")


def kill_worker_1_mid_batch(
    target: StreamStack, *, holding: str, stage: str, hold_s: float, first: int
) -> float:
    """SIGKILL worker-1 while its batch waits on ``holding`` (frozen with SIGSTOP), then thaw it.

    Freezing Triton stops a batch before its worklist write; freezing Kafka stops it after the write, while its
    predictions are being published, before the commit. Either way worker-0 must take the partitions over
    (after the 10 s session timeout) and leave every study on the worklist once. Returns how many studies
    worker-0 found already scored (replays of worker-1's uncommitted batch, mostly).
    """
    replays_before = target.worker_metric("cxr_worker_studies_unchanged_total", 0)
    # Worker-1 back from an earlier test holds no partition until the group's rebalance gives it some (the
    # killed member's session must time out first): a stream started before would all go to worker-0.
    wait_for(
        "worker-1 to hold partitions",
        lambda: target.worker_metric("cxr_worker_assigned_partitions", 1) > 0,
        timeout_s=90,
    )
    stream = Stream(target, make_studies(target.folder, first=first, count=100), per_s=5).start()
    stream.wait_for(8)
    try:
        hold_a_batch_of_worker_1(target, holding, stage=stage, hold_s=hold_s)
        target.kill("worker-1")
    except BaseException:
        target.freeze(holding, frozen=False)
        with contextlib.suppress(AssertionError):
            stream.join()
        target.produced.update(stream.published)  # the next test counts every study this one produced
        target.up()
        raise
    finally:
        target.freeze(holding, frozen=False)
    try:
        published = stream.join()
        assert_each_once_on_the_worklist(target, published, republish_allowed=True)
        return target.worker_metric("cxr_worker_studies_unchanged_total", 0) - replays_before
    finally:
        target.up()  # worker-1 back for the tests after this one


def test_a_worker_killed_while_its_batch_is_in_triton(stream_stack: StreamStack) -> None:
    kill_worker_1_mid_batch(stream_stack, holding="triton", stage="scoring", hold_s=1.0, first=2000)


def test_a_worker_killed_after_its_worklist_write_before_its_commit(stream_stack: StreamStack) -> None:
    # Kafka frozen: the batch passes Triton and its worklist write, then waits to publish.
    replays = kill_worker_1_mid_batch(
        stream_stack, holding="kafka", stage="publishing", hold_s=2.0, first=3000
    )
    assert replays >= 1  # worker-0 re-read the killed batch, found it on the worklist and left it unchanged


def test_serving_a_new_version_mid_stream_scores_each_study_once(stream_stack: StreamStack) -> None:
    settings = stream_stack.settings
    exported = export_model(
        build_densenet121(seed=2),
        stream_stack.folder / "v2.onnx",
        input_size=64,
        metadata={"cxr.weights": "test"},
    )
    version = add_version(settings, exported, metadata={"source": "test"})
    assert version == 2
    early = make_studies(stream_stack.folder, first=4000, count=30)
    stream = Stream(stream_stack, early, per_s=5).start()
    stream.wait_for(10)
    serve_version(settings, version)
    http = f"{settings.triton_http_url}/v2/models/{settings.model_name}/versions"

    def switched() -> bool:
        return _http_ok(f"{http}/2/ready") and not _http_ok(f"{http}/1/ready")

    wait_for("Triton to serve version 2 only", switched, timeout_s=60)
    early_ids = stream.join()
    late = Stream(stream_stack, make_studies(stream_stack.folder, first=5000, count=10), per_s=5).start()
    late_ids = late.join()

    predictions = assert_each_once_on_the_worklist(
        stream_stack, early_ids + late_ids, republish_allowed=False
    )
    assert {predictions[s][0].model_version for s in late_ids} == {"2"}
    versions = [predictions[s][0].model_version for s in early_ids]
    assert versions[0] == "1" and set(versions) <= {"1", "2"}
