"""The model a benchmark measures on a stack: the served version, read as the model repository defines it."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.stack import BenchStack, StackFailed
from cxr_triage.settings import Settings


def _stack(home: Path, versions: list[int], serving: str | None) -> BenchStack:
    settings = Settings(home=home)
    folder = settings.model_repository / settings.model_name
    for version in versions:
        (folder / str(version)).mkdir(parents=True)
        (folder / str(version) / "model.onnx").write_bytes(b"")
    if serving is not None:
        (folder / "SERVING").write_text(serving)
    return BenchStack(settings, env={}, private=True)


@pytest.mark.parametrize(("serving", "expected"), [("1\n", "1"), (None, "3"), ("7\n", "3"), ("garbage", "3")])
def test_the_served_version_else_the_newest(tmp_path: Path, serving: str | None, expected: str) -> None:
    path, version = _stack(tmp_path, [1, 3], serving).model_file()
    assert version == expected
    assert path == tmp_path / "model_repository" / "cxr_classifier" / expected / "model.onnx"


def test_no_version_is_a_stack_failure(tmp_path: Path) -> None:
    with pytest.raises(StackFailed, match="cxr-triage model init"):
        _stack(tmp_path, [], None).model_file()
