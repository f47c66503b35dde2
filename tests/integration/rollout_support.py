"""Shared by the tests of the rollout worker: MLflow registry versions for its decisions, and its counters.

``register_versions`` makes a registered model whose version 1 is the champion served as repository version 1,
and more versions that the test maps to repository versions itself.
"""

from __future__ import annotations

import re
import urllib.request
import uuid

from mlflow.tracking import MlflowClient


def register_versions(client: MlflowClient, name: str, count: int) -> None:
    """``count`` versions of ``name``; version 1 is tagged as served version 1 and holds the champion alias."""
    client.create_registered_model(name)
    # Versions need a source inside a run's artifacts on a server; nothing is downloaded from them here.
    run = client.create_run(client.create_experiment(f"{name}-{uuid.uuid4().hex[:6]}"))
    for _ in range(count):
        client.create_model_version(name, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
    client.set_model_version_tag(name, "1", "cxr.served_version", "1")
    client.set_registered_model_alias(name, "champion", "1")


def rollout_counters(metrics_port: str | int) -> dict[str, float]:
    """The rollout worker's decision counters from its /metrics, as ``decisions:promoted``, ``skipped:stale``..."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
        text = response.read().decode()
    found = re.findall(r'^cxr_rollout_(decisions|skipped)_total\{\w+="(\w+)"\} (\S+)$', text, re.M)
    return {f"{kind}:{label}": float(value) for kind, label, value in found}
