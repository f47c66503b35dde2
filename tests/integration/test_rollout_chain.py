"""The whole online-evaluation chain on a real stack started by ``cxr-triage up`` (Kafka, Redis, Triton,
MLflow, one inference worker, the API, the stream processors and the rollout worker), on the public set.

An operator starts each rollout with the CLI; the radiologists' verdicts (the set's own labels, posted to the
API) reach the processors; the policy decides on the paired numbers; the rollout worker carries the decision out
on Triton and in MLflow. The champion is the untrained 64 px model (version 1); the challengers
(``online_models``) are version 2, which ranks the studies worse (shadow: never promoted), version 3, which calls
nothing abnormal (canary at 0.5: rolled back by itself), and version 4, which ranks them better (shadow:
promoted, and it serves the studies that come after). Studies keep arriving across the promotion's switch; in
the end every study has exactly one serving prediction and at most one shadow one.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from mlflow.tracking import MlflowClient

from cxr_triage.model.repository import add_version
from cxr_triage.model.rollout import challenger_name, in_fraction
from cxr_triage.settings import Settings
from deploy.testing import stack_env
from tests.integration.conftest import Stack
from tests.integration.online_models import PublicStudy, fit_challengers, public_studies
from tests.integration.processors_support import wait_for
from tests.integration.rollout_support import register_versions, rollout_counters
from tests.integration.streaming import read_predictions

pytestmark = pytest.mark.integration

REGISTERED = "cxr_online_chain"
CANARY_FRACTION = 0.5
MIN_PAIRED = 50


def _interleave(normal: list[PublicStudy], abnormal: list[PublicStudy]) -> list[PublicStudy]:
    """Both classes spread over the list, so that any prefix of it (what is verdicted so far) holds both."""
    out, step = [], max(1, round(len(abnormal) / max(1, len(normal))))
    pending = list(normal)
    for i, study in enumerate(abnormal):
        if i % step == 0 and pending:
            out.append(pending.pop(0))
        out.append(study)
    return out + pending


@dataclass
class Chain:
    stack: Stack
    settings: Settings
    challengers_auroc: float
    published: dict[str, PublicStudy] = field(default_factory=dict)

    def cli_json(self, *args: str) -> dict[str, Any]:
        return dict(json.loads(self.stack.cli(*args, "--json").stdout))

    def produce(self, studies: list[PublicStudy]) -> list[str]:
        out = self.cli_json("produce", *(str(s.path) for s in studies))
        by_sha = {hashlib.sha256(s.path.read_bytes()).hexdigest(): s for s in studies}
        ids = [entry["study_id"] for entry in out["published"]]
        assert len(ids) == len(studies), out
        for entry in out["published"]:
            self.published[entry["study_id"]] = by_sha[entry["sha256"]]
        return ids

    def rollout_metrics(self) -> dict[str, float]:
        return rollout_counters(self.stack.env["CXR_ROLLOUT_METRICS_PORT"])

    def worker_rollout_counts(self) -> dict[str, float]:
        """The worker's ``cxr_worker_rollout_predictions`` samples and challenger failures, for a failure's message."""
        url = f"http://127.0.0.1:{self.stack.env['CXR_WORKER_METRICS_PORT']}/metrics"
        try:
            text = httpx.get(url, timeout=5).text
        except httpx.HTTPError as exc:
            return {"unreachable": 1.0, str(exc): 0.0}
        return {
            line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(
                ("cxr_worker_rollout_predictions_total", "cxr_worker_challenger_failures_total")
            )
        }

    def challenger_ready(self) -> bool:
        url = f"{self.settings.triton_http_url}/v2/models/{challenger_name(self.settings.model_name)}/ready"
        try:
            return httpx.get(url, timeout=5).status_code == 200
        except httpx.HTTPError:
            return False


def _wait(what: str, check: Callable[[], Any], timeout_s: float) -> Any:
    return wait_for(check, timeout_s=timeout_s, what=what, every_s=1.0)


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chain]:
    home = tmp_path_factory.mktemp("chain")
    env = stack_env(home, worker_count=1, skip_model_init=False, feedback_loop=True)
    env.update(
        {
            "CXR_INITIAL_MODEL_INPUT_SIZE": "64",
            "CXR_KAFKA_PARTITIONS": "2",
            "CXR_WORKER_ROLLOUT_REFRESH_S": "1",
            "CXR_METRICS_INTERVAL_S": "2",
            "CXR_REGISTERED_MODEL": REGISTERED,
            # Only the online evaluation decides here: no retraining, whatever the untrained champion scores.
            "CXR_RETRAIN_WORKER_ENABLED": "false",
            "CXR_RETRAIN_MIN_LABELS": "100000",
            "CXR_FLOOR_MIN_EXAMPLES": "100000",
            "CXR_RETRAIN_ON_DRIFT": "false",
            # The policy's thresholds, scaled to a test on the public set's 70 normal studies.
            "CXR_ROLLOUT_MIN_PAIRED": str(MIN_PAIRED),
            "CXR_ROLLOUT_MIN_PER_CLASS": "15",
            "CXR_ROLLOUT_BOOTSTRAP_RESAMPLES": "1000",
            "CXR_CANARY_MIN_EXAMPLES": "10",
        }
    )
    models = fit_challengers(public_studies(), home / "challenger-onnx")
    with Stack(home=home, env=env).running() as stack:
        settings = Settings(**{k[4:].lower(): v for k, v in env.items() if k.startswith("CXR_")})
        client = MlflowClient(
            tracking_uri=settings.mlflow_tracking_uri, registry_uri=settings.mlflow_tracking_uri
        )
        register_versions(client, REGISTERED, 4)
        for version, onnx_file in (("2", models.worse), ("3", models.broken), ("4", models.better)):
            stated = {"registered_model": REGISTERED, "registered_model_version": version}
            assert str(add_version(settings, onnx_file, metadata=stated)) == version
        yield Chain(stack=stack, settings=settings, challengers_auroc=models.in_sample_auroc)


def test_worse_waits_broken_canary_rolls_back_better_is_promoted(
    chain: Chain, capsys: pytest.CaptureFixture[str]
) -> None:
    studies = public_studies()
    normal = [s for s in studies if not s.abnormal]
    abnormal = [s for s in studies if s.abnormal]
    worse_phase = _interleave(normal[0:20], abnormal[0:40])
    canary_phase = _interleave(normal[20:30], abnormal[40:80])
    better_phase = _interleave(normal[30:55], abnormal[80:130])
    during_switch = _interleave(normal[55:60], abnormal[130:145])
    after = _interleave(normal[60:64], abnormal[145:151])
    stack = chain.stack
    radiologist = chain.cli_json("users", "add", "dr-online", "--role", "radiologist")["token"]
    api = httpx.Client(base_url=stack.api_url, headers={"Authorization": f"Bearer {radiologist}"}, timeout=30)
    read: set[str] = set()

    def unread() -> int:
        return int(api.get("/worklist", params={"limit": 1}).json()["total"])

    def scored(ids: list[str], timeout_s: float = 300) -> None:
        expected = len(set(chain.published) - read)
        _wait(f"{len(ids)} studies scored", lambda: unread() == expected, timeout_s)

    def verdicts(ids: list[str]) -> None:
        for study_id in ids:
            response = api.post(
                f"/studies/{study_id}/verdict",
                json=chain.published[study_id].verdict(),
                headers={"Idempotency-Key": str(uuid.uuid4())},
            )
            assert response.status_code == 200, response.text
            read.add(study_id)

    def online(version: str) -> dict[str, Any]:
        return dict(chain.cli_json("feedback", "stats")["rollout"]["challengers"].get(version) or {})

    def decisions() -> dict[str, Any]:
        return dict(chain.cli_json("feedback", "stats")["rollout"]["decisions"])

    def start(*args: str) -> None:
        stack.cli("model", *args)
        _wait("Triton to serve the challenger", chain.challenger_ready, 120)
        time.sleep(3 * float(stack.env["CXR_WORKER_ROLLOUT_REFRESH_S"]))  # the worker has read the rollout

    try:
        # 1. Version 2 in shadow: worse on the same studies, so the policy keeps waiting; the operator stops it.
        start("shadow", "2")
        worse_ids = chain.produce(worse_phase)
        scored(worse_ids)
        verdicts(worse_ids)
        last: dict[str, Any] = {}

        def all_paired() -> dict[str, Any] | None:
            last.update(online("2"))
            return last if (last.get("paired") or {}).get("paired") == len(worse_ids) else None

        try:
            judged = _wait("version 2 judged on every study", all_paired, 300)
        except AssertionError as exc:  # say how far the pairing got, and what the worker wrote in shadow
            raise AssertionError(f"{exc}; last: {last}; worker: {chain.worker_rollout_counts()}") from None
        paired = judged["paired"]
        assert judged["action"] == "keep_waiting" and "not shown" in judged["reason"], judged
        assert paired["auroc_challenger"] < paired["auroc_champion"] and paired["difference_ci_high"] < 0
        stack.cli("model", "rollout", "stop")
        _wait("Triton to unload the challenger", lambda: not chain.challenger_ready(), 120)
        assert "2" not in decisions()

        # 2. Version 3 in canary: it calls nothing abnormal, so the policy rolls it back on the canary's own
        # sensitivity, and the rollout worker stops the rollout.
        start("canary", "3", "--fraction", str(CANARY_FRACTION))
        canary_ids = chain.produce(canary_phase)
        scored(canary_ids)
        verdicts(canary_ids)
        rollback = _wait("the rollback", lambda: decisions().get("3"), 180)
        assert (rollback["action"], rollback["decided_by"], rollback["mode"]) == (
            "rollback",
            "policy",
            "canary",
        )
        assert "canary sensitivity 0.000" in rollback["reason"]
        _wait(
            "the rollback carried out", lambda: chain.rollout_metrics().get("decisions:rolled_back") == 1, 120
        )
        status = chain.cli_json("model", "status")
        assert status["champion"] == 1 and status["rollout"]["mode"] == "none"
        assert not chain.challenger_ready()

        # 3. Version 4 in shadow: better, so promoted; studies keep arriving while the worker switches.
        start("shadow", "4")
        better_ids = chain.produce(better_phase)
        scored(better_ids)
        switch_ids: list[str] = []

        def keep_arriving() -> None:
            for study in during_switch:
                switch_ids.extend(chain.produce([study]))
                time.sleep(0.5)

        arriving = threading.Thread(target=keep_arriving)
        arriving.start()
        verdicted_at = time.monotonic()
        verdicts(better_ids)
        promotion = _wait("the promotion", lambda: decisions().get("4"), 180)
        assert (promotion["action"], promotion["decided_by"]) == ("promote", "policy"), promotion
        _wait(
            "the promotion carried out", lambda: chain.rollout_metrics().get("decisions:promoted") == 1, 180
        )
        switched_s = time.monotonic() - verdicted_at
        arriving.join(timeout=300)
        status = chain.cli_json("model", "status")
        assert status["champion"] == 4 and status["rollout"]["mode"] == "none"
        after_ids = chain.produce(after)
        scored(switch_ids + after_ids)
        assert unread() == len(switch_ids) + len(after_ids)  # none lost: each unread study still on the list
    finally:
        api.close()

    # Each study: one serving prediction (a replay may republish it, identical), at most one shadow one.
    every = worse_ids + canary_ids + better_ids + switch_ids + after_ids
    predictions = read_predictions(chain.settings, set(every))
    serving: dict[str, Any] = {}
    shadow: dict[str, Any] = {}
    for study_id in every:
        by_role: dict[str, set[str]] = {"serving": set(), "shadow": set()}
        for p in predictions.get(study_id, []):
            by_role[p.role].add(p.model_dump_json(exclude={"event_id"}))
        assert len(by_role["serving"]) == 1, (study_id, by_role)
        assert len(by_role["shadow"]) <= 1, (study_id, by_role)
        serving[study_id] = json.loads(next(iter(by_role["serving"])))
        shadow[study_id] = json.loads(next(iter(by_role["shadow"]))) if by_role["shadow"] else None

    assert all(serving[s]["model_version"] == "1" and shadow[s]["model_version"] == "2" for s in worse_ids)
    for study_id in canary_ids:  # the stable hash's arm; the other model scored it in shadow
        arm = "canary" if in_fraction(study_id, CANARY_FRACTION) else "champion"
        assert serving[study_id]["arm"] == arm, study_id
        assert serving[study_id]["model_version"] == ("3" if arm == "canary" else "1")
    arms = [serving[s]["arm"] for s in canary_ids]
    assert all(shadow[s]["model_version"] == "4" for s in better_ids)
    assert {serving[s]["model_version"] for s in switch_ids} <= {"1", "4"}
    assert all(serving[s]["model_version"] == "4" and shadow[s] is None for s in after_ids)

    client = MlflowClient(
        tracking_uri=chain.settings.mlflow_tracking_uri, registry_uri=chain.settings.mlflow_tracking_uri
    )
    assert client.get_model_version_by_alias(REGISTERED, "champion").version == "4"
    tags = {v: client.get_model_version(REGISTERED, v).tags for v in ("2", "3", "4")}
    assert "cxr.online_decision" not in tags["2"]
    assert tags["3"]["cxr.online_decision"] == "rollback" and tags["4"]["cxr.online_decision"] == "promote"
    assert tags["4"]["cxr.previous_served_version"] == "1"

    better = promotion["metrics"]
    canary = rollback["metrics"]
    with capsys.disabled():
        print(
            f"\nchallengers fitted in-sample (AUROC {chain.challengers_auroc:.3f} on the whole set)"
            f"\nshadow v2 (worse): {paired['paired']} paired, AUROC champion {paired['auroc_champion']:.3f}"
            f" challenger {paired['auroc_challenger']:.3f}, difference CI [{paired['difference_ci_low']:.3f},"
            f" {paired['difference_ci_high']:.3f}] -> {judged['action']}"
            f"\ncanary v3 (broken) at {CANARY_FRACTION}: {arms.count('canary')}/{len(arms)} studies on the"
            f" canary arm, canary sensitivity {canary['canary_sensitivity']:.3f} on"
            f" {canary['canary_examples']:.0f} -> rollback"
            f"\nshadow v4 (better): {promotion['paired_studies']} paired, AUROC champion"
            f" {better['auroc_champion']:.3f} challenger {better['auroc_challenger']:.3f}, difference CI"
            f" [{better['difference_ci_low']:.3f}, {better['difference_ci_high']:.3f}] -> promote;"
            f" first verdict -> switched {switched_s:.0f} s; of the {len(switch_ids)} studies that arrived across"
            f" the switch, {sum(serving[s]['model_version'] == '1' for s in switch_ids)} were scored by 1, the"
            f" rest by 4"
        )
