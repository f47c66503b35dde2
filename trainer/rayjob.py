"""The KubeRay ``RayJob`` that runs one retraining on the ``RayCluster`` of deploy/k8s (pure: renders, submits nothing).

On Kubernetes a training request can run as a RayJob instead of inside the long-lived retrain worker: the job's
driver is ``cxr-triage retrain-worker --once`` on the cluster's head, which handles the one outstanding request
(the trigger never asks again before its result), trains on the cluster's workers, gates, publishes and exits.
``python -m trainer.rayjob --request-id ID | kubectl create -f -`` submits one; deploy/k8s/README.md says when.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from typing import Any

RAY_API_VERSION = "ray.io/v1"
# deploy/k8s/base/ray.yaml: the RayCluster a job runs on, found by KubeRay through this label.
DEFAULT_CLUSTER = "cxr-retrain"
DEFAULT_NAMESPACE = "cxr-triage"
# The longest a retraining may take before KubeRay stops it (the retrain_max_minutes bound plus the gate).
DEFAULT_DEADLINE_S = 3600
# A finished job's record stays this long for `kubectl get rayjobs`, then KubeRay deletes it.
DEFAULT_TTL_S = 24 * 3600
_NAME_PREFIX = "cxr-retrain-"
_MAX_NAME = 63  # a DNS-1123 label: KubeRay names the submitter Job and pods after the RayJob


def entrypoint(timeout_s: int) -> str:
    """The driver: the retrain worker's own command, for one request (exit 1 if none comes in ``timeout_s``)."""
    return f"cxr-triage retrain-worker --once --timeout-s {timeout_s}"


def job_name(request_id: str) -> str:
    """A valid, stable object name for a request id: its DNS-safe part plus a short hash (ids may differ in case)."""
    digest = hashlib.sha256(request_id.encode()).hexdigest()[:8]
    safe = re.sub(r"[^a-z0-9-]+", "-", request_id.lower()).strip("-")
    room = _MAX_NAME - len(_NAME_PREFIX) - len(digest) - 1
    stem = safe[:room].rstrip("-")
    return f"{_NAME_PREFIX}{stem}-{digest}" if stem else f"{_NAME_PREFIX}{digest}"


def render_rayjob(
    request_id: str,
    *,
    cluster: str = DEFAULT_CLUSTER,
    namespace: str = DEFAULT_NAMESPACE,
    wait_for_request_s: int = 300,
    deadline_s: int = DEFAULT_DEADLINE_S,
    ttl_s: int = DEFAULT_TTL_S,
) -> dict[str, Any]:
    """The RayJob manifest of one training request, on the existing RayCluster ``cluster``.

    The driver inherits the head pod's environment (the CXR_* peer addresses, the secrets, the data volume);
    only ``CXR_RAY_ADDRESS`` is set here, so that the training joins the cluster it runs on instead of starting
    a private one. Nothing else is needed: the request itself is read from Kafka, not passed on.
    """
    if not request_id:
        raise ValueError("a request id is needed")
    runtime_env = {"env_vars": {"CXR_RAY_ADDRESS": "auto"}}
    return {
        "apiVersion": RAY_API_VERSION,
        "kind": "RayJob",
        "metadata": {
            "name": job_name(request_id),
            "namespace": namespace,
            "labels": {
                "app.kubernetes.io/name": "cxr-retrain-job",
                "app.kubernetes.io/part-of": "cxr-triage",
            },
            # Annotations, not labels: a request id need not be a valid label value.
            "annotations": {"cxr-triage/request-id": request_id},
        },
        "spec": {
            "entrypoint": entrypoint(wait_for_request_s),
            "clusterSelector": {"ray.io/cluster": cluster},
            # KubeRay submits through a Job of its own (`ray job submit`) and follows the driver's logs.
            "submissionMode": "K8sJobMode",
            "runtimeEnvYAML": json.dumps(runtime_env),  # JSON is YAML
            "activeDeadlineSeconds": deadline_s,
            "ttlSecondsAfterFinished": ttl_s,
            # The cluster is shared and long-lived: a finished job leaves it running.
            "shutdownAfterJobFinishes": False,
            "backoffLimit": 0,  # a failed request is answered "failed"; the trigger decides to ask again
        },
    }


def main(argv: list[str] | None = None) -> None:
    """``python -m trainer.rayjob --request-id ID``: print the RayJob as JSON (``kubectl create -f -`` reads it)."""
    parser = argparse.ArgumentParser(prog="python -m trainer.rayjob", description=__doc__)
    parser.add_argument("--request-id", required=True)
    parser.add_argument("--cluster", default=DEFAULT_CLUSTER)
    parser.add_argument("--namespace", default=DEFAULT_NAMESPACE)
    args = parser.parse_args(argv)
    manifest = render_rayjob(args.request_id, cluster=args.cluster, namespace=args.namespace)
    sys.stdout.write(json.dumps(manifest, indent=2) + "\n")


if __name__ == "__main__":
    main()
