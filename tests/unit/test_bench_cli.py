"""``cxr-triage bench``: registered on the console script, with its seven subcommands and their options."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from bench.cli import bench
from cxr_triage.cli import main

SUBCOMMANDS = {"raw", "triton", "pipeline", "int8", "torch", "all", "api"}


def test_bench_group_lists_its_subcommands() -> None:
    result = CliRunner().invoke(main, ["bench", "--help"])
    assert result.exit_code == 0, result.output
    assert set(bench.commands) == SUBCOMMANDS
    for name in SUBCOMMANDS:
        assert name in result.output


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS - {"api"}))
def test_every_measuring_subcommand_has_json(name: str) -> None:
    result = CliRunner().invoke(main, ["bench", name, "--help"])
    assert result.exit_code == 0, result.output
    assert "--json" in result.output


def test_api_subcommand_keeps_its_options() -> None:
    result = CliRunner().invoke(main, ["bench", "api", "--help"])
    assert result.exit_code == 0, result.output
    for option in ("--studies", "--rate", "--duration", "--limit", "--out"):
        assert option in result.output
