"""`cxr-triage bench api` end to end at a tiny scale: it loads, drives, measures and writes its report."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from bench.commands.api import api_command


def test_bench_runs_small_and_writes_its_report(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    result = CliRunner().invoke(
        api_command,
        ["--studies", "300", "--rate", "40", "--duration", "2", "--limit", "20", "--out", str(out)],
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "api.json").read_text())
    assert report["studies_queued"] == 300 and report["page_limit"] == 20
    assert report["statuses"] == {"200": report["requests"] + report["warmup_requests"]}
    assert report["requests"] == 80  # 40/s for 2 s after the warm-up
    assert 0 < report["p50_ms"] <= report["p99_ms"] <= report["max_ms"]
    assert "| requests |" in (out / "api.md").read_text()
