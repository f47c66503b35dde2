"""The console script finds each service's commands through entry points (cxr_triage.cli)."""

from __future__ import annotations

from importlib.metadata import EntryPoint

import pytest
from click.testing import CliRunner

from cxr_triage import cli

SERVICE_COMMANDS = {
    "up", "down", "status", "produce", "dicom-gateway", "model", "worker", "api", "worklist", "users",
    "train", "evaluate", "promote", "rollback", "bench", "retrain-worker", "processors", "feedback",
    "rollout-worker", "simulate",
}  # fmt: skip


def test_every_service_command_is_offered() -> None:
    result = CliRunner().invoke(cli.main, ["--help"])
    assert result.exit_code == 0, result.output
    listed = {line.split()[0] for line in result.output.split("Commands:")[1].splitlines() if line.strip()}
    assert listed == SERVICE_COMMANDS


def test_a_command_whose_package_is_not_installed_is_not_offered(monkeypatch: pytest.MonkeyPatch) -> None:
    # As in the service image, which does not ship bench/.
    points = {
        "bench": EntryPoint("bench", "bench_not_shipped.cli:bench", cli.COMMAND_GROUP),
        "status": EntryPoint("status", "deploy.cli:status", cli.COMMAND_GROUP),
    }
    monkeypatch.setattr(cli, "_entry_points", lambda: points)
    runner = CliRunner()
    assert "bench" not in runner.invoke(cli.main, ["--help"]).output
    missing = runner.invoke(cli.main, ["bench", "--help"])
    assert missing.exit_code == 2 and "No such command 'bench'" in missing.output
    assert runner.invoke(cli.main, ["status", "--help"]).exit_code == 0


def test_http_client_request_logs_are_quiet_unless_debugging() -> None:
    import logging

    from cxr_triage.logs import configure_logging

    root, httpx_logger = logging.getLogger(), logging.getLogger("httpx")
    saved = (root.handlers[:], root.level, httpx_logger.level)
    try:
        configure_logging("INFO")
        assert not httpx_logger.isEnabledFor(logging.INFO)
        assert logging.getLogger("cxr_triage").isEnabledFor(logging.INFO)
        configure_logging("DEBUG")
        assert httpx_logger.isEnabledFor(logging.DEBUG)
    finally:
        root.handlers[:], root.level = saved[0], saved[1]
        httpx_logger.setLevel(saved[2])
