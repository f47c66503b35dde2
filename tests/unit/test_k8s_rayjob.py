"""trainer.rayjob: the RayJob of one training request (its schema check is in tests/integration/test_k8s_manifests)."""

from __future__ import annotations

import json
import re

import pytest

from trainer import rayjob

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def test_the_job_runs_the_retrain_workers_command_once_on_the_cluster() -> None:
    manifest = rayjob.render_rayjob("req-0001-abcdef", cluster="c1", namespace="ns", wait_for_request_s=60)
    spec = manifest["spec"]
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == "RayJob"
    assert spec["entrypoint"] == "cxr-triage retrain-worker --once --timeout-s 60"
    assert spec["clusterSelector"] == {"ray.io/cluster": "c1"}
    assert spec["shutdownAfterJobFinishes"] is False  # the shared cluster outlives the job
    assert json.loads(spec["runtimeEnvYAML"]) == {"env_vars": {"CXR_RAY_ADDRESS": "auto"}}
    assert manifest["metadata"]["namespace"] == "ns"
    assert manifest["metadata"]["annotations"]["cxr-triage/request-id"] == "req-0001-abcdef"


@pytest.mark.parametrize(
    "request_id", ["req-0001-abcdef", "Retrain_2025.01.01:X", "x" * 64, "--__..", "ABCDEFGH"]
)
def test_names_are_dns_labels_and_distinct_per_request(request_id: str) -> None:
    name = rayjob.job_name(request_id)
    assert len(name) <= 63 and DNS_LABEL.match(name), name
    assert name == rayjob.job_name(request_id)
    assert name != rayjob.job_name(request_id.swapcase() + "y")


def test_ids_that_differ_only_in_case_get_different_jobs() -> None:
    assert rayjob.job_name("RequestAAAA") != rayjob.job_name("requestaaaa")


def test_an_empty_request_id_is_refused() -> None:
    with pytest.raises(ValueError, match="request id"):
        rayjob.render_rayjob("")


def test_the_command_line_prints_the_manifest(capsys: pytest.CaptureFixture[str]) -> None:
    rayjob.main(["--request-id", "req-0001-abcdef"])
    printed = json.loads(capsys.readouterr().out)
    assert printed == rayjob.render_rayjob("req-0001-abcdef")
