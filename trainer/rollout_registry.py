"""MLflow's side of an online decision: which registry version a repository version is, and its tags.

Decisions name repository versions (what Triton serves). A repository version maps to a registry version by
the ``metadata.json`` that ``promote`` / ``rollback`` wrote when they added it (``registered_model``,
``registered_model_version``), else by the ``cxr.served_version`` tag ``promote`` sets on the registry
version. A version added by hand (``cxr-triage model add``) has neither: it is switched all the same and the
worker logs that MLflow has nothing to record it on.
"""

from __future__ import annotations

import logging
from typing import Final, Protocol

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from cxr_triage.events import ModelDecisionEventV1
from cxr_triage.model.repository import version_metadata
from trainer import tracking
from trainer.promote import SERVED_VERSION, record_champion
from trainer.settings import TrainerSettings

logger = logging.getLogger(__name__)

DECISION: Final = "cxr.online_decision"
DECISION_ID: Final = "cxr.online_decision_id"
_TAG_VALUE_MAX: Final = 5000


class OnlineRegistry(Protocol):
    def registry_version(self, repository_version: str) -> str | None:
        """The registry version stored as ``repository_version``, or None when it has none."""
        ...

    def record_promotion(
        self,
        registry_version: str,
        decision: ModelDecisionEventV1,
        *,
        served: str,
        previous_served: str | None,
    ) -> None: ...

    def record_rollback(self, registry_version: str, decision: ModelDecisionEventV1) -> None: ...


def decision_tags(decision: ModelDecisionEventV1) -> dict[str, str]:
    """What a version carries about the online decision on it: the decision and the paired numbers."""
    tags = {
        DECISION: decision.action,
        DECISION_ID: decision.decision_id,
        "cxr.online_mode": decision.mode,
        "cxr.online_reason": decision.reason or "-",
        "cxr.online_against": decision.champion_version or "-",
        "cxr.online_paired_studies": str(decision.paired_studies),
        "cxr.online_decided_at": decision.decided_at.isoformat(timespec="seconds"),
    }
    for name, value in sorted(decision.metrics.items()):
        tags[f"cxr.online.{name}"] = "n/a" if value is None else f"{value:.6g}"
    return {key: value[:_TAG_VALUE_MAX] for key, value in tags.items()}


class MlflowRegistry:
    """The registry at ``settings.mlflow_tracking_uri``; a client per call (the server may have restarted)."""

    def __init__(self, settings: TrainerSettings) -> None:
        self.settings = settings

    def _client(self) -> MlflowClient:
        return tracking.client_for(self.settings.mlflow_tracking_uri)

    def _version(self, client: MlflowClient, version: str) -> ModelVersion | None:
        try:
            return client.get_model_version(self.settings.registered_model, version)
        except MlflowException:
            return None

    def registry_version(self, repository_version: str) -> str | None:
        name = self.settings.registered_model
        client = self._client()
        metadata = version_metadata(self.settings, int(repository_version))
        stated = metadata.get("registered_model_version", "")
        if metadata.get("registered_model") == name and stated:
            found = self._version(client, stated)
            return None if found is None else str(found.version)
        try:
            versions = client.search_model_versions(f"name = '{name}'")
        except MlflowException:  # no such registered model yet
            return None
        served = [v for v in versions if v.tags.get(SERVED_VERSION) == repository_version]
        # Newest first: an older registry version may have been served under this number in another repository.
        served.sort(key=lambda v: int(v.version), reverse=True)
        return str(served[0].version) if served else None

    def _tag(self, client: MlflowClient, version: str, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            client.set_model_version_tag(self.settings.registered_model, version, key, value)

    def record_promotion(
        self,
        registry_version: str,
        decision: ModelDecisionEventV1,
        *,
        served: str,
        previous_served: str | None,
    ) -> None:
        client = self._client()
        # Decision tags first: the alias is the last write, so a version named champion always says why.
        self._tag(client, registry_version, decision_tags(decision))
        version = client.get_model_version(self.settings.registered_model, registry_version)
        record_champion(client, version, served=served, previous_served=previous_served)

    def record_rollback(self, registry_version: str, decision: ModelDecisionEventV1) -> None:
        self._tag(self._client(), registry_version, decision_tags(decision))
