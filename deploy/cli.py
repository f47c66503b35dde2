"""``cxr-triage up | down | status``: the local stack (Kafka, Redis, Triton, workers, API), loopback by default."""

from __future__ import annotations

import json
import logging

import click

from cxr_triage.settings import load_settings
from deploy import stack as stack_ops
from deploy.components import KINDS, UnknownComponentError, select
from deploy.stack import Stack, StackError, StartResult
from deploy.supervisor import Supervisor

logger = logging.getLogger(__name__)


def _summary(stack: Stack, results: list[StartResult]) -> None:
    if results and all(r.action == "already running" for r in results):
        click.echo(f"already running: {', '.join(r.name for r in results)}")
        return
    for r in results:
        took = f"{r.seconds:5.1f} s" if r.action == "started" else ""
        click.echo(f"{r.name:<10} {r.action:<16} pid {r.pid:<8} {r.host}:{r.port:<6} {took}")
    if any(r.name == "api" for r in results):
        click.echo(f"worklist API: {stack.settings.api_url}/")
    click.echo(f"logs: {stack.settings.logs_dir}")


@click.command()
@click.option("--detach", "-d", is_flag=True, help="Return once everything is healthy (no supervision).")
@click.option(
    "--only",
    envvar="CXR_COMPONENTS",
    default="",
    metavar="NAMES",
    help=f"Comma-separated components to start, in stack order ({','.join(KINDS)}); default all. "
    "Env: CXR_COMPONENTS.",
)
@click.option(
    "--observability",
    is_flag=True,
    help="Also start Prometheus at CXR_PROMETHEUS_URL's port, scraping every service, with the alert rules "
    "(CXR_OBSERVABILITY_ENABLED=true does the same).",
)
def up(detach: bool, only: str, observability: bool) -> None:
    """Start the local stack; without --detach, supervise it until Ctrl-C, then stop it."""
    settings = load_settings()
    if observability:
        settings = settings.model_copy(update={"observability_enabled": True})
    stack = Stack.from_settings(settings)
    try:
        components = select(stack.components, only)
    except UnknownComponentError as exc:
        raise click.BadParameter(str(exc), param_hint="--only") from exc
    try:
        if detach:
            _summary(stack, stack_ops.up(stack, components))
            return
        supervisor = Supervisor(stack, components)
        supervisor.install_signal_handlers()
        supervisor.run(on_started=lambda results: _summary(stack, results))
    except StackError as exc:
        hint = "\n`cxr-triage down` stops what did start." if detach else ""
        raise click.ClickException(f"{exc}{hint}") from exc


@click.command()
def down() -> None:
    """Stop every process `up` started (clients first, Kafka last); data stays in place."""
    stack = Stack.from_settings(load_settings())
    stopped = stack_ops.down(stack)
    click.echo(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object instead of a table.")
def status(as_json: bool) -> None:
    """Report each component: running, unhealthy (alive, failing its health check), stopped or dead."""
    stack = Stack.from_settings(load_settings())
    report = stack_ops.status(stack)
    supervisor = stack_ops.supervisor_pid(stack)
    if as_json:
        payload = {
            "components": {s.name: s.to_dict() for s in report},
            "home": str(stack.settings.home),
            "supervisor_pid": supervisor,
        }
        click.echo(json.dumps(payload, indent=2))
        return
    click.echo(f"{'COMPONENT':<10} {'STATE':<10} {'PID':<8} {'PORT':<6} LOG")
    for s in report:
        pid = str(s.pid) if s.pid is not None else "-"
        port = str(s.port) if s.port is not None else "-"
        click.echo(f"{s.name:<10} {s.state:<10} {pid:<8} {port:<6} {s.log}")
    click.echo(f"home: {stack.settings.home}")
    if supervisor is not None:
        click.echo(f"supervised in the foreground by pid {supervisor}")
