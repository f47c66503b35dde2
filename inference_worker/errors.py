"""Failures the worker survives by not committing and trying the batch again later."""

from __future__ import annotations


class StageUnavailable(Exception):
    """Triton, Redis or Kafka failed in a way a retry may fix; nothing of the batch may be committed."""

    def __init__(self, stage: str, message: str) -> None:
        super().__init__(f"{stage}: {message}")
        self.stage = stage


class ModelMismatch(RuntimeError):
    """The served model does not take the input this worker prepares; retrying cannot help."""
