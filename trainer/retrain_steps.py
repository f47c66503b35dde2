"""The retrain worker's real steps: the training path of ``cxr-triage train`` and the gate of ``promote``.

Nothing new happens here: ``run_training`` trains on Ray, exports ONNX and registers the ``challenger``;
``promote`` gates it against the champion on the evaluation manifest given (the held-out feedback slice) and,
if it passes, switches Triton and moves the aliases, exactly as ``cxr-triage promote`` does.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient

from trainer import tracking
from trainer.config import TrainConfig
from trainer.data.manifest import Manifest, Verify
from trainer.data.sources import ExampleSource
from trainer.errors import RegistryError
from trainer.promote import PromotionResult, promote
from trainer.retrain import Challenger, ChampionInfo
from trainer.serving import TritonRepository
from trainer.settings import TrainerSettings
from trainer.train import run_training


class RegistrySteps:
    def __init__(self, settings: TrainerSettings) -> None:
        self.settings = settings

    def _client(self) -> MlflowClient:
        # Per call: the server may have restarted since the last request (client_for fails fast if it is down).
        return tracking.client_for(self.settings.mlflow_tracking_uri)

    def champion(self) -> ChampionInfo | None:
        version = tracking.version_by_alias(self._client(), self.settings.registered_model, tracking.CHAMPION)
        if version is None:
            return None
        size = version.tags.get("cxr.input_size", "")
        return ChampionInfo(
            version=str(version.version),
            input_size=int(size) if size.isdigit() else None,
            architecture=version.tags.get("cxr.architecture") or None,
        )

    def train(
        self,
        cfg: TrainConfig,
        *,
        data: Sequence[Path],
        sources: Sequence[ExampleSource],
        tags: dict[str, str],
        params: dict[str, Any],
    ) -> Challenger:
        outcome = run_training(
            cfg=cfg,
            data=data,
            settings=self.settings,
            run_name=f"retrain-{tags.get('cxr.request_id', '')}"[:64],
            verify=Verify.DECODE,
            tags=tags,
            sources=sources,
            params=params,
        )
        if outcome.model_version is None:
            raise RegistryError("training registered no model version")
        client = self._client()
        for key in ("cxr.request_id", "cxr.retrain_reason"):
            if key in tags:
                client.set_model_version_tag(
                    self.settings.registered_model, outcome.model_version, key, tags[key]
                )
        return Challenger(version=outcome.model_version, run_id=outcome.run_id)

    def promote(self, challenger: Challenger, evaluation: Manifest) -> PromotionResult:
        client = self._client()
        name = self.settings.registered_model
        current = tracking.version_by_alias(client, name, tracking.CHALLENGER)
        if current is None or str(current.version) != challenger.version:
            # Someone ran `cxr-triage train` meanwhile: gating theirs under this request would be wrong.
            moved = current.version if current else "nothing"
            raise RegistryError(
                f"the {tracking.CHALLENGER!r} alias names {moved}, not version {challenger.version}"
            )
        return promote(
            client=client,
            settings=self.settings,
            serving=TritonRepository(self.settings),
            evaluation=evaluation,
        )

    def tag_run(self, run_id: str, tags: dict[str, str]) -> None:
        client = self._client()
        for key, value in tags.items():
            client.set_tag(run_id, key, value[:5000])
