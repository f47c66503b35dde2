"""``cxr-triage bench pipeline`` against the real stack: every study reaches the worklist exactly once."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from bench.cli import bench
from tests.conftest import PIPELINE_JSON_KEYS as REQUIRED_KEYS
from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration


def test_bench_pipeline_burst_json(stack: Stack) -> None:
    args = ["pipeline", "--use-running", "--n", "10", "--pattern", "burst", "--json", "--raw-seconds", "2"]
    result = CliRunner().invoke(bench, [*args, "--timeout", "120"], env=stack.env, catch_exceptions=False)

    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert set(summary) >= REQUIRED_KEYS
    assert summary["n"] == 10
    assert summary["lost"] == 0
    assert summary["duplicated"] == 0
    assert summary["detail"]["written"] == 10
    assert summary["raw_images_per_s"] > 0 and summary["pipeline_studies_per_s"] > 0
    assert summary["ratio"] == round(summary["pipeline_studies_per_s"] / summary["raw_images_per_s"], 3)
    assert 0 < summary["e2e_p50_ms"] <= summary["e2e_p99_ms"]
    assert summary["input_size"] == int(stack.env["CXR_INITIAL_MODEL_INPUT_SIZE"])
