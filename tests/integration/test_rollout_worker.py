"""The rollout worker against real services: Kafka (the session's private broker) and an MLflow server.

A private home holds a model repository with versions 1 (served, registry champion 1), 2 and 3 (registry 2 and
3, as ``promote`` records them). The worker runs in the background as the stack runs it; rollouts are started
with the operator's commands (whose decisions it must leave alone) and the policy's decisions are published on
``cxr.model-decisions.v1`` as the stream processors publish them. Triton is not started: a switch writes the
repository and finds no server to wait for, as in the retrain worker's test.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from mlflow.tracking import MlflowClient

from cxr_triage import topics
from cxr_triage.events import ModelDecisionEventV1
from cxr_triage.model import repository as model_repo
from cxr_triage.model.challenger import challenger_dir, rollout_state
from cxr_triage.model.rollout import NONE
from cxr_triage.settings import Settings
from deploy.testing import cxr, stack_env
from tests.integration.conftest import wait_for_port
from tests.integration.kafka_support import KafkaBroker
from tests.integration.rollout_support import register_versions, rollout_counters
from tests.unit.test_model_repo import small_model

pytestmark = pytest.mark.integration

REGISTERED = "cxr_online_it"
# As the entry point `rollout-worker` runs it, without depending on the package metadata being reinstalled.
WORKER = "from trainer.rollout_cli import rollout_worker; rollout_worker()"


@dataclass
class Rig:
    env: dict[str, str]
    settings: Settings
    bootstrap: str

    def client(self) -> MlflowClient:
        uri = self.env["CXR_MLFLOW_TRACKING_URI"]
        return MlflowClient(tracking_uri=uri, registry_uri=uri)

    def counters(self) -> dict[str, float]:
        return rollout_counters(self.env["CXR_ROLLOUT_METRICS_PORT"])

    def publish(self, decision: ModelDecisionEventV1) -> None:
        producer = Producer({"bootstrap.servers": self.bootstrap})
        producer.produce(
            topics.MODEL_DECISIONS, key=decision.challenger_version.encode(), value=decision.to_bytes()
        )
        assert producer.flush(30) == 0

    def operator(self, *args: str) -> None:
        done = cxr(["model", *args], self.env, timeout_s=120)
        assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"


def _wait(what: str, condition: Callable[[], bool], *, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"waited {timeout_s:g} s for: {what}")
        time.sleep(0.5)


def _skip_earlier_decisions(bootstrap: str, group: str) -> None:
    """Commit the group at the topic's end: other tests' decisions in the shared broker are not this worker's."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    deadline = time.monotonic() + 60
    try:
        while True:
            try:
                meta = consumer.list_topics(topics.MODEL_DECISIONS, timeout=10)
                ends = []
                for p in meta.topics[topics.MODEL_DECISIONS].partitions:
                    tp = TopicPartition(topics.MODEL_DECISIONS, p)
                    ends.append(
                        TopicPartition(tp.topic, p, consumer.get_watermark_offsets(tp, timeout=10)[1])
                    )
                consumer.commit(offsets=ends, asynchronous=False)
                return
            except KafkaException:  # a broker that just started has no partition leaders yet
                if time.monotonic() > deadline:
                    raise
                time.sleep(1.0)
    finally:
        consumer.close()


@pytest.fixture(scope="module")
def rig(kafka: KafkaBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    home = tmp_path_factory.mktemp("rollout-home")
    env = stack_env(home)
    group = f"cxr-rollout-test-{uuid.uuid4().hex[:8]}"
    env |= {
        "CXR_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap,
        "CXR_ROLLOUT_GROUP": group,
        "CXR_REGISTERED_MODEL": REGISTERED,
        "CXR_ROLLOUT_RETRY_S": "1",
    }
    settings = Settings(home=home)
    models = tmp_path_factory.mktemp("rollout-models")
    model_repo.add_version(settings, small_model(models, seed=1), metadata={})
    for version in ("2", "3"):
        stated = {"registered_model": REGISTERED, "registered_model_version": version}
        model_repo.add_version(settings, small_model(models, seed=int(version)), metadata=stated)
    model_repo.serve_version(settings, 1)
    _skip_earlier_decisions(kafka.bootstrap, group)
    try:
        up = cxr(["up", "--detach", "--only", "mlflow"], env, timeout_s=300)
        assert up.returncode == 0, f"{up.stdout}\n{up.stderr}"
        rig = Rig(env=env, settings=settings, bootstrap=kafka.bootstrap)
        client = rig.client()
        register_versions(client, REGISTERED, 3)
        yield rig
    finally:
        cxr(["down"], env, timeout_s=120)
        shutil.rmtree(models, ignore_errors=True)


def _policy(action: str, challenger: str, mode: str) -> ModelDecisionEventV1:
    return ModelDecisionEventV1.model_validate(
        {
            "decision_id": f"md-it-{uuid.uuid4().hex[:16]}",
            "action": action,
            "mode": mode,
            "champion_version": "1",
            "challenger_version": challenger,
            "reason": f"integration {action}",
            "paired_studies": 150,
            "metrics": {"auroc_champion": 0.8, "auroc_challenger": 0.85},
            "decided_by": "policy",
        }
    )


def test_policy_rollback_then_promote_are_carried_out_once(rig: Rig) -> None:
    worker = subprocess.Popen(
        [sys.executable, "-c", WORKER], env=rig.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_for_port(int(rig.env["CXR_ROLLOUT_METRICS_PORT"]), timeout_s=120)
        settings, client = rig.settings, rig.client()

        # A running canary of 2, rolled back by the policy: the operator's own decision is left alone.
        rig.operator("canary", "2", "--fraction", "0.2")
        _wait("the operator's canary decision skipped", lambda: rig.counters()["skipped:operator"] == 1)
        assert rollout_state(settings).challenger_version == "2"
        rollback = _policy("rollback", "2", "canary")
        rig.publish(rollback)
        _wait("the rollback carried out", lambda: rig.counters()["decisions:rolled_back"] == 1)
        assert rollout_state(settings) is NONE and not challenger_dir(settings).exists()
        assert model_repo.serving_version(settings) == 1
        tags = client.get_model_version(REGISTERED, "2").tags
        assert (tags["cxr.online_decision"], tags["cxr.online_decision_id"]) == (
            "rollback",
            rollback.decision_id,
        )
        assert client.get_model_version_by_alias(REGISTERED, "champion").version == "1"

        # A shadow of 3, promoted by the policy.
        rig.operator("shadow", "3")
        _wait("the operator's shadow decision skipped", lambda: rig.counters()["skipped:operator"] == 2)
        promote = _policy("promote", "3", "shadow")
        rig.publish(promote)
        _wait("the promotion carried out", lambda: rig.counters()["decisions:promoted"] == 1)
        assert model_repo.serving_version(settings) == 3
        assert rollout_state(settings) is NONE and not challenger_dir(settings).exists()
        assert client.get_model_version_by_alias(REGISTERED, "champion").version == "3"
        tags = client.get_model_version(REGISTERED, "3").tags
        assert tags["cxr.online_decision"] == "promote" and tags["cxr.online.auroc_challenger"] == "0.85"
        assert (tags["cxr.previous_champion"], tags["cxr.previous_served_version"]) == ("1", "1")

        # The same decisions again (a republished event, a lost commit): nothing changes.
        configs = {p.name: p.read_text() for p in model_repo.model_dir(settings).glob("config*.pbtxt")}
        rig.publish(promote)
        rig.publish(rollback)
        _wait("both skipped as duplicates", lambda: rig.counters()["skipped:duplicate"] == 2)
        counts = rig.counters()
        assert (counts["decisions:promoted"], counts["decisions:rolled_back"], counts["skipped:stale"]) == (
            1,
            1,
            0,
        )
        assert model_repo.serving_version(settings) == 3 and rollout_state(settings) is NONE
        assert configs == {
            p.name: p.read_text() for p in model_repo.model_dir(settings).glob("config*.pbtxt")
        }
        assert client.get_model_version_by_alias(REGISTERED, "champion").version == "3"
    finally:
        worker.send_signal(signal.SIGTERM)
        _out, err = worker.communicate(timeout=60)
    assert worker.returncode == 0, err[-3000:]
