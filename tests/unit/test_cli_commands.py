"""The console script finds each service's commands through entry points (cxr_triage.cli)."""

from __future__ import annotations

import json
from importlib.metadata import EntryPoint
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from cxr_triage import cli

SERVICE_COMMANDS = {
    "up", "down", "status", "produce", "dicom-gateway", "model", "worker", "api", "worklist", "users",
    "train", "evaluate", "promote", "rollback", "bench", "retrain-worker", "processors", "feedback",
    "rollout-worker", "simulate", "demo",
}  # fmt: skip


def test_every_service_command_is_offered() -> None:
    result = CliRunner().invoke(cli.main, ["--help"])
    assert result.exit_code == 0, result.output
    section = result.output.split("Commands:")[1].split("\n\n")[0]  # the examples follow a blank line
    listed = {line.split()[0] for line in section.splitlines() if line.strip()}
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


def _commands(
    command: click.Command, path: tuple[str, ...] = ()
) -> list[tuple[tuple[str, ...], click.Command]]:
    found = [(path, command)]
    if isinstance(command, click.Group):
        ctx = click.Context(command)
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            assert sub is not None
            found += _commands(sub, (*path, name))
    return found


def test_every_command_has_examples_that_use_only_its_own_options() -> None:
    runner = CliRunner()
    every = _commands(cli.main)
    assert len(every) > 40
    for path, command in every:
        result = runner.invoke(cli.main, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert "Examples:" in result.output, f"cxr-triage {' '.join(path)} --help has no examples"
        examples = result.output.split("Examples:")[1]
        options = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
        prefix = " ".join(("cxr-triage", *path))
        for line in examples.splitlines():
            used = line.split("#")[0].strip()
            if not used.startswith(prefix + " ") or isinstance(command, click.Group):
                continue
            unknown = (
                {word.split("=")[0] for word in used.split() if word.startswith("--")} - options - {"--help"}
            )
            assert not unknown, f"{used}: {unknown} are not options of {prefix}"


def test_an_unforeseen_failure_is_one_line_saying_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    @click.command()
    def explode() -> None:
        raise RuntimeError("the disk is full\nsecond line of detail")

    points = {"explode": EntryPoint("explode", "x:y", cli.COMMAND_GROUP)}
    monkeypatch.setattr(cli, "_entry_points", lambda: points)
    monkeypatch.setattr(cli, "_installed", lambda ep: True)
    monkeypatch.setattr(EntryPoint, "load", lambda self: explode)
    runner = CliRunner()
    result = runner.invoke(cli.main, ["explode"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "Error: RuntimeError: the disk is full (rerun with --log-level DEBUG to see where)"
    ]
    assert "Traceback" not in result.output
    debugging = runner.invoke(cli.main, ["--log-level", "DEBUG", "explode"])
    assert isinstance(debugging.exception, RuntimeError)  # the traceback, for whoever asked for it


def test_log_file_takes_the_log_lines_off_the_terminal(tmp_path: Path) -> None:
    import logging

    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    log = tmp_path / "logs" / "x.log"
    try:
        result = CliRunner().invoke(cli.main, ["--log-file", str(log), "users", "list", "--help"])
        assert result.exit_code == 0
        logging.getLogger("cxr_triage.test").warning("written to the file", extra={"n": 1})
        line = json.loads(log.read_text().splitlines()[-1])
        assert line["msg"] == "written to the file" and line["n"] == 1
    finally:
        for handler in root.handlers:
            handler.close()
        root.handlers[:], root.level = saved
