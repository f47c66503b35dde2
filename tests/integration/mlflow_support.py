"""Registry versions for tests of the online decisions: a registered model whose version 1 is the champion
served as repository version 1, and more versions that the test maps to repository versions itself."""

from __future__ import annotations

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
