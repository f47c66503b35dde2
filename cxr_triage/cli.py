"""The ``cxr-triage`` console script: every process of the system is one of its subcommands.

Each service owns its commands (``<service>/cli.py``); this module only wires them together and imports a
service's module when its command runs, so ``cxr-triage worklist`` does not pay for torch.
"""

from __future__ import annotations

import importlib
import os

import click

from cxr_triage.logs import configure_logging

# command name -> "module:attribute" of a click command or group
_COMMANDS: dict[str, str] = {
    "up": "deploy.cli:up",
    "down": "deploy.cli:down",
    "status": "deploy.cli:status",
    "produce": "producers.cli:produce",
    "model": "inference_worker.cli:model",
    "worker": "inference_worker.cli:worker",
    "api": "priority_queue_api.cli:api",
    "worklist": "priority_queue_api.cli:worklist",
    "users": "priority_queue_api.cli:users",
    "bench": "inference_worker.bench.cli:bench",
    "train": "trainer.cli:train",
    "evaluate": "trainer.cli:evaluate",
    "promote": "trainer.cli:promote",
    "rollback": "trainer.cli:rollback",
}

# Subcommands that another service adds to a group: "group": {"name": "module:attribute"}
_EXTRA_SUBCOMMANDS: dict[str, dict[str, str]] = {
    "bench": {"api": "priority_queue_api.cli:bench_api"},
}


def _load(target: str) -> click.Command:
    module_name, attr = target.split(":")
    command = getattr(importlib.import_module(module_name), attr)
    assert isinstance(command, click.Command)
    return command


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = _COMMANDS.get(cmd_name)
        if target is None:
            return None
        command = _load(target)
        extras = _EXTRA_SUBCOMMANDS.get(cmd_name, {})
        if extras and isinstance(command, click.Group):
            for name, extra in extras.items():
                command.add_command(_load(extra), name)
        return command


@click.group(cls=LazyGroup)
@click.option("--log-level", default=lambda: os.environ.get("CXR_LOG_LEVEL", "INFO"), show_default="INFO")
def main(log_level: str) -> None:
    """cxr-triage: chest X-ray triage worklist."""
    configure_logging(log_level.upper())
