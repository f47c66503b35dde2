"""The ``cxr-triage`` console script: every process of the system is one of its subcommands.

Each service declares its own commands as entry points (group ``cxr_triage.commands`` in pyproject.toml), so
this shared package imports no service; a command's module is imported only when that command runs, so
``cxr-triage worklist`` does not pay for torch. A command whose package is not installed (``bench`` in a
service image) is simply not offered.
"""

from __future__ import annotations

import os
from importlib.metadata import EntryPoint, entry_points

import click

from cxr_triage.logs import configure_logging

COMMAND_GROUP = "cxr_triage.commands"


def _entry_points() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=COMMAND_GROUP)}


def _installed(ep: EntryPoint) -> bool:
    from importlib.util import find_spec

    return find_spec(ep.module.split(".")[0]) is not None


class EntryPointGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(name for name, ep in _entry_points().items() if _installed(ep))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        ep = _entry_points().get(cmd_name)
        if ep is None or not _installed(ep):
            return None
        command = ep.load()
        if not isinstance(command, click.Command):
            raise TypeError(f"entry point {ep.value!r} is not a click command")
        return command


@click.group(cls=EntryPointGroup)
@click.option("--log-level", default=lambda: os.environ.get("CXR_LOG_LEVEL", "INFO"), show_default="INFO")
def main(log_level: str) -> None:
    """cxr-triage: chest X-ray triage worklist."""
    configure_logging(log_level.upper())
