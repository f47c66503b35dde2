"""The challenger under online evaluation, as the worker sees it: the rollout state and the scorer of its model.

The state lives in the challenger model's Triton config (``cxr_triage.model.rollout``), written by
``cxr-triage model shadow|canary`` and applied by Triton's repository poll. The worker reads it at most every
``refresh_s`` seconds (an operator's command takes effect within that and Triton's poll period) and again at
once after a challenger call failed. No challenger model, or one Triton has not loaded, is "no rollout": the
worker scores with the champion alone, as it always did.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Protocol

import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from cxr_triage.model.rollout import NONE, RolloutError, RolloutState, challenger_name
from inference_worker.triton_client import Scorer, TritonScorer

logger = logging.getLogger(__name__)

_UNREACHABLE = frozenset({"StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED"})


class Challenger(Protocol):
    @property
    def scorer(self) -> Scorer:
        """Scores on the challenger's Triton model (its own contract: input size, thresholds)."""
        ...

    def state(self) -> RolloutState:
        """The rollout in force (cached for a few seconds)."""
        ...

    def invalidate(self) -> None:
        """Forget the cached state and contract: the next batch asks Triton again."""
        ...


class TritonChallenger:
    """The ``<model>_challenger`` Triton model beside the champion ``model_name``."""

    def __init__(
        self,
        url: str,
        model_name: str,
        *,
        timeout_s: float = 30.0,
        max_batch_size: int = 32,
        want_cams: bool = True,
        refresh_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.model_name = challenger_name(model_name)
        self.refresh_s = refresh_s
        self.timeout_s = min(timeout_s, 10.0)
        self._scorer = TritonScorer(
            url, self.model_name, timeout_s=timeout_s, max_batch_size=max_batch_size, want_cams=want_cams
        )
        self._client = grpcclient.InferenceServerClient(url=url)
        self._clock = clock
        self._state: RolloutState = NONE
        self._read_at: float | None = None

    @property
    def scorer(self) -> Scorer:
        return self._scorer

    def state(self) -> RolloutState:
        now = self._clock()
        if self._read_at is not None and now - self._read_at < self.refresh_s:
            return self._state
        try:
            state = self._read()
        except InferenceServerException as exc:
            if str(exc.status()) in _UNREACHABLE:
                # Triton itself is away: the champion's call says so; keep the state, ask again next batch.
                logger.info("rollout state unreadable", extra={"error": f"{exc.message()} ({exc.status()})"})
                return self._state
            state = NONE  # e.g. an unknown model: the challenger was removed
        if state.challenger_version != self._state.challenger_version:
            self._scorer.invalidate()
        self._state, self._read_at = state, now
        return state

    def _read(self) -> RolloutState:
        if not self._client.is_model_ready(self.model_name, client_timeout=self.timeout_s):
            return NONE  # no challenger, or one still loading: the champion scores alone meanwhile
        config = self._client.get_model_config(self.model_name, client_timeout=self.timeout_s).config
        parameters = {key: value.string_value for key, value in config.parameters.items()}
        try:
            return RolloutState.from_mapping(parameters)
        except RolloutError as exc:
            logger.warning("challenger config has no usable rollout; ignored", extra={"error": str(exc)})
            return NONE

    def invalidate(self) -> None:
        self._read_at = None
        self._scorer.invalidate()

    def close(self) -> None:
        self._scorer.close()
        self._client.close()
