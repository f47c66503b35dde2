"""Triton over gRPC: one inference call per micro-batch, the version that answered it, and that version's contract.

The served model states its own input size (the input shape in Triton's model metadata) and thresholds (the
``cxr.*`` parameters of its config, see ``cxr_triage.model.contract``). The scorer reads them when it starts
and again whenever they may have changed: after a failed call (a request shaped for the previous version is
refused by Triton, never mis-scored) or when an answer comes from a version other than the contract's.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.grpc import MAX_GRPC_MESSAGE_SIZE
from tritonclient.utils import InferenceServerException

from cxr_triage.labels import NUM_LABELS
from cxr_triage.model.contract import ContractError, ModelContract
from cxr_triage.model.export import CAM_OUTPUT_NAME, INPUT_NAME, OUTPUT_NAME
from inference_worker.errors import ModelMismatch, StageUnavailable

logger = logging.getLogger(__name__)

STAGE = "triton"
MAX_BATCH_SIZE = 32  # the default max_batch_size of the model config (CXR_TRITON_MAX_BATCH_SIZE)
_CHANNEL_ARGS = [
    # tritonclient's defaults (it drops them all when channel_args is given)...
    ("grpc.max_send_message_length", MAX_GRPC_MESSAGE_SIZE),
    ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_SIZE),
    # ...and a short reconnect backoff: gRPC's own grows to 2 min, so a restarted Triton would sit unused.
    ("grpc.initial_reconnect_backoff_ms", 500),
    ("grpc.min_reconnect_backoff_ms", 500),
    ("grpc.max_reconnect_backoff_ms", 5000),
]


@dataclass(frozen=True)
class Scores:
    probabilities: np.ndarray  # [N, 14] float32, label order
    model_versions: list[str]  # per row: the version that served it (a reload can land between chunks)
    cams: np.ndarray | None = None  # [N, 14, h, w] float32 raw class activation maps, when asked for


class Scorer(Protocol):
    def contract(self) -> ModelContract:
        """The served version's contract (cached until ``invalidate``)."""
        ...

    def invalidate(self) -> None:
        """Forget the cached contract: the next ``contract`` asks Triton again."""
        ...

    def score(self, images: np.ndarray) -> Scores: ...


class TritonScorer:
    """Scores uint8 [N, 1, S, S] batches on ``model_name``; every Triton failure becomes ``StageUnavailable``."""

    def __init__(
        self,
        url: str,
        model_name: str,
        *,
        timeout_s: float = 30.0,
        max_batch_size: int = MAX_BATCH_SIZE,
        version_ttl_s: float = 5.0,
        want_cams: bool = True,
    ) -> None:
        self.url = url
        self.model_name = model_name
        self.timeout_s = timeout_s
        self.max_batch_size = max_batch_size
        self.version_ttl_s = version_ttl_s
        self.want_cams = want_cams
        self._client = grpcclient.InferenceServerClient(url=url, channel_args=_CHANNEL_ARGS)
        self._ready_version: str | None = None
        self._ready_version_at = 0.0
        self._contract: ModelContract | None = None

    def contract(self) -> ModelContract:
        if self._contract is None:
            self._contract = self._read_contract()
        return self._contract

    def invalidate(self) -> None:
        self._contract = None

    def _read_contract(self) -> ModelContract:
        """Input size from the model metadata, thresholds from the config of the version Triton serves."""
        try:
            metadata = self._client.get_model_metadata(self.model_name, client_timeout=self.timeout_s)
            config = self._client.get_model_config(self.model_name, client_timeout=self.timeout_s).config
        except InferenceServerException as exc:
            raise StageUnavailable(STAGE, f"model metadata: {exc.message()} ({exc.status()})") from exc
        inputs = {tensor.name: tensor for tensor in metadata.inputs}
        image = inputs.get(INPUT_NAME)
        shape = [int(d) for d in image.shape] if image is not None else []
        if image is None or image.datatype != "UINT8" or len(shape) != 4 or shape[1] != 1:
            described = {name: (t.datatype, list(t.shape)) for name, t in inputs.items()}
            raise ModelMismatch(
                f"model {self.model_name!r} takes {described}; this worker sends {INPUT_NAME!r} as uint8 "
                "[N, 1, S, S] greyscale pixels (re-export it with cxr_triage.model.export)"
            )
        parameters = {key: value.string_value for key, value in config.parameters.items()}
        parameters["cxr.input_size"] = str(shape[-1])  # the shape Triton enforces is the one that counts
        try:
            contract = ModelContract.from_mapping(parameters)
        except ContractError as exc:
            raise ModelMismatch(f"model {self.model_name!r}: {exc}") from exc
        if contract.version and contract.version not in metadata.versions:
            # The config already names a version that is still loading: ask again on the next batch.
            raise StageUnavailable(STAGE, f"version {contract.version} is not ready yet")
        if self.want_cams and CAM_OUTPUT_NAME not in {tensor.name for tensor in metadata.outputs}:
            logger.warning("the served model has no activation maps; none will be stored")
            self.want_cams = False
        return contract

    def score(self, images: np.ndarray) -> Scores:
        if images.ndim != 4 or len(images) == 0:
            raise ValueError(f"expected a non-empty [N, 1, S, S] batch, got {list(images.shape)}")
        try:
            chunks = [
                self._infer(images[i : i + self.max_batch_size])
                for i in range(0, len(images), self.max_batch_size)
            ]
        except StageUnavailable:
            self.invalidate()  # e.g. refused for a shape the newly served version does not take
            raise
        probabilities = np.concatenate([c.probabilities for c in chunks], axis=0)
        versions = [version for c in chunks for version in c.model_versions]
        maps = [c.cams for c in chunks if c.cams is not None]
        cams = None
        # Chunks served by two versions (a switch between them) may have maps of two sizes: keep none then.
        if len(maps) == len(chunks) and len({m.shape[2:] for m in maps}) == 1:
            cams = np.concatenate(maps, axis=0)
        return Scores(probabilities=probabilities, model_versions=versions, cams=cams)

    def _infer(self, images: np.ndarray) -> Scores:
        batch = np.ascontiguousarray(images, dtype=np.uint8)
        request = grpcclient.InferInput(INPUT_NAME, list(batch.shape), "UINT8")
        request.set_data_from_numpy(batch)
        names = [OUTPUT_NAME, CAM_OUTPUT_NAME] if self.want_cams else [OUTPUT_NAME]
        try:
            result = self._client.infer(
                self.model_name,
                inputs=[request],
                outputs=[grpcclient.InferRequestedOutput(name) for name in names],
                client_timeout=self.timeout_s,
            )
        except InferenceServerException as exc:
            raise StageUnavailable(STAGE, f"inference failed: {exc.message()} ({exc.status()})") from exc
        probabilities = result.as_numpy(OUTPUT_NAME)
        if probabilities is None or probabilities.shape != (len(batch), NUM_LABELS):
            shape = None if probabilities is None else list(probabilities.shape)
            raise StageUnavailable(STAGE, f"model returned {shape}, expected [{len(batch)}, {NUM_LABELS}]")
        cams = result.as_numpy(CAM_OUTPUT_NAME) if self.want_cams else None
        if cams is not None and (cams.ndim != 4 or cams.shape[:2] != (len(batch), NUM_LABELS)):
            raise StageUnavailable(
                STAGE,
                f"model returned maps of {list(cams.shape)}, expected [{len(batch)}, {NUM_LABELS}, h, w]",
            )
        version = result.get_response().model_version or self.ready_version() or "unknown"
        return Scores(probabilities=probabilities, model_versions=[version] * len(batch), cams=cams)

    def ready_version(self) -> str | None:
        """The newest version Triton reports ready (model metadata), cached for a few seconds."""
        now = time.monotonic()
        if self._ready_version is None or now - self._ready_version_at > self.version_ttl_s:
            try:
                metadata = self._client.get_model_metadata(self.model_name, client_timeout=self.timeout_s)
            except InferenceServerException:
                return self._ready_version
            versions = sorted(metadata.versions, key=lambda v: int(v) if v.isdigit() else -1)
            self._ready_version = versions[-1] if versions else None
            self._ready_version_at = now
        return self._ready_version

    def wait_until_ready(self, *, stop: threading.Event, log_every_s: float = 10.0) -> bool:
        """Block until the model is ready (False if ``stop`` is set first); ``ModelMismatch`` on wrong input."""
        started = time.monotonic()
        last_log = -log_every_s
        while not stop.is_set():
            try:
                if self._client.is_model_ready(self.model_name, client_timeout=5.0):
                    contract = self.contract()
                    logger.info(
                        "Triton model ready",
                        extra={
                            "model_name": self.model_name,
                            "version": contract.version or self.ready_version(),
                            "input_size": contract.input_size,
                            "url": self.url,
                        },
                    )
                    return True
                state = "model not ready"
            except InferenceServerException as exc:
                state = f"{exc.message()} ({exc.status()})"
            except StageUnavailable as exc:
                state = str(exc)
            waited = time.monotonic() - started
            if waited - last_log >= log_every_s:
                logger.info(
                    "waiting for Triton",
                    extra={
                        "model_name": self.model_name,
                        "url": self.url,
                        "state": state,
                        "waited_s": round(waited),
                    },
                )
                last_log = waited
            stop.wait(1.0)
        return False

    def close(self) -> None:
        self._client.close()
