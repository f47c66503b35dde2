"""``cxr-triage bench``: registered on the console script, with the five subcommands and their --json."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from cxr_triage.cli import main


def test_bench_group_lists_its_subcommands() -> None:
    result = CliRunner().invoke(main, ["bench", "--help"])
    assert result.exit_code == 0, result.output
    for name in ("raw", "triton", "pipeline", "int8", "all"):
        assert name in result.output


@pytest.mark.parametrize("name", ["raw", "triton", "pipeline", "int8", "all"])
def test_every_subcommand_has_json(name: str) -> None:
    result = CliRunner().invoke(main, ["bench", name, "--help"])
    assert result.exit_code == 0, result.output
    assert "--json" in result.output
