"""The serving switch of a promotion: a version that does not come up is switched back."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainer.errors import ServingError
from trainer.promote import _switch


class FakeServing:
    def __init__(self, broken: set[str]) -> None:
        self.broken = broken
        self.served: list[str] = []

    def add(self, onnx_path: Path, *, metadata: dict[str, str]) -> str:
        raise NotImplementedError

    def serve(self, version: str) -> None:
        self.served.append(version)
        if version in self.broken:
            raise ServingError(f"version {version} did not load")

    def serving(self) -> str | None:
        return self.served[-1] if self.served else None

    def has(self, version: str) -> bool:
        return True


def test_a_version_that_fails_to_serve_is_switched_back() -> None:
    serving = FakeServing(broken={"3"})
    with pytest.raises(ServingError, match="did not load"):
        _switch(serving, "3", back_to="2")
    assert serving.served == ["3", "2"]


def test_a_good_version_stays() -> None:
    serving = FakeServing(broken=set())
    _switch(serving, "3", back_to="2")
    assert serving.served == ["3"]
