"""The ``cxr-triage`` console script: every process of the system is one of its subcommands.

Each service declares its own commands as entry points (group ``cxr_triage.commands`` in pyproject.toml), so
this shared package imports no service; a command's module is imported only when that command runs, so
``cxr-triage worklist`` does not pay for torch. A command whose package is not installed (``bench`` in a
service image) is simply not offered.
"""

from __future__ import annotations

import logging
import os
import sys
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import click

from cxr_triage.cli_examples import epilog
from cxr_triage.logs import configure_logging

logger = logging.getLogger(__name__)

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
        _add_examples(command, cmd_name)
        return command

    def invoke(self, ctx: click.Context) -> Any:
        """A failure nobody foresaw is one line saying what to do; the traceback goes to the log, or to the
        terminal at ``--log-level DEBUG``."""
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort, KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:
            if logging.getLogger().isEnabledFor(logging.DEBUG):
                raise
            logger.debug("command failed", exc_info=True)
            first = (str(exc).strip().splitlines() or [""])[0]
            raise click.ClickException(
                f"{type(exc).__name__}: {first or 'no message'} (rerun with --log-level DEBUG to see where)"
            ) from exc


def _add_examples(command: click.Command, path: str) -> None:
    """Each command's examples under its --help (cxr_triage.cli_examples), its subcommands' too."""
    command.epilog = command.epilog or epilog(path)
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            _add_examples(sub, f"{path} {name}")


@click.group(cls=EntryPointGroup, epilog=epilog(""))
@click.option("--log-level", default=lambda: os.environ.get("CXR_LOG_LEVEL", "INFO"), show_default="INFO")
@click.option(
    "--log-file",
    default=lambda: os.environ.get("CXR_LOG_FILE") or None,
    metavar="PATH",
    help="Append the log (JSON lines) to PATH instead of stderr. Env: CXR_LOG_FILE.",
)
@click.pass_context
def main(ctx: click.Context, log_level: str, log_file: str | None) -> None:
    """cxr-triage: chest X-ray triage worklist.

    Every incoming chest X-ray is scored for 14 findings; a priority orders the radiologists' worklist so that
    likely-abnormal studies are read first. Each command below is one process or task of the system; the
    settings (CXR_*, one address per peer) are in the README.
    """
    if log_file is None and ctx.invoked_subcommand in TERMINAL_COMMANDS and sys.stderr.isatty():
        log_file = _default_log_file(ctx.invoked_subcommand)
    configure_logging(log_level.upper(), file=log_file)


# Long jobs a person watches in a terminal: progress bars and a result there, their log lines in a file.
TERMINAL_COMMANDS = frozenset({"train", "produce", "simulate", "demo"})


def _default_log_file(command: str) -> str | None:
    from cxr_triage.settings import load_settings

    try:
        folder = load_settings().logs_dir
    except ValueError:
        return None  # settings the command itself will refuse, with the reason, on the terminal
    if "--help" not in sys.argv:
        click.echo(f"log: {folder / f'{command}.log'}", err=True)
    return str(folder / f"{command}.log")
