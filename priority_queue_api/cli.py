"""``cxr-triage api run`` serves the worklist API; ``cxr-triage worklist`` prints it; ``cxr-triage users``
manages who may call it."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable

import click
import httpx

from cxr_triage.settings import load_settings
from priority_queue_api.users import Role, UserStoreError, add_user, list_users, remove_user, users_file


@click.group()
def api() -> None:
    """The worklist API service."""


@api.command("run")
def run() -> None:
    """Serve the API on CXR_BIND_HOST:CXR_API_PORT (127.0.0.1:8000 unless set)."""
    import uvicorn

    from priority_queue_api.app import create_app

    settings = load_settings()
    # No access log: request paths carry study ids. Requests are counted by route template in /metrics.
    uvicorn.run(
        create_app(settings),
        host=settings.bind_host,
        port=settings.api_port,
        log_config=None,
        access_log=False,
    )


@click.group(invoke_without_command=True)
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 500))
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON.")
@click.option(
    "--token",
    default=lambda: os.environ.get("CXR_API_TOKEN", ""),
    show_default="$CXR_API_TOKEN",
    help="Bearer token of a radiologist or engineer.",
)
@click.pass_context
def worklist(ctx: click.Context, limit: int, as_json: bool, token: str) -> None:
    """Print the top of the worklist, most urgent first; `worklist rebuild` restores it from Kafka."""
    if ctx.invoked_subcommand is not None:
        return
    settings = load_settings()
    url = f"{settings.api_url}/worklist"
    if not token:
        raise click.ClickException(
            "a token is needed: pass --token or set CXR_API_TOKEN (cxr-triage users add NAME --role engineer)"
        )
    try:
        response = httpx.get(
            url, params={"limit": limit}, headers={"Authorization": f"Bearer {token}"}, timeout=10.0
        )
    except httpx.HTTPError as exc:
        raise click.ClickException(f"worklist API at {url} is unreachable: {exc}") from exc
    if response.status_code != 200:
        raise click.ClickException(f"worklist API answered {response.status_code}: {response.text}")
    body = response.json()
    if as_json:
        click.echo(json.dumps(body, indent=2))
        return
    click.echo(f"{body['total']} studies on the worklist; top {len(body['items'])}:")
    click.echo(
        f"{'tier':<8}  {'eff.':>5}  {'prio.':>5}  {'left':>7}  {'study':<20}  {'model':<6}  top findings"
    )
    for item in body["items"]:
        sla = item["sla"]
        findings = ", ".join(f"{f['label']} {f['probability']:.2f}" for f in item["top_findings"])
        click.echo(
            f"{sla['tier']:<8}  {sla['effective_priority']:5.2f}  {item['priority']:5.3f}  "
            f"{sla['time_left_s'] / 60:6.0f}m  {item['study_id'][:20]:<20}  v{item['model_version']:<5}  {findings}"
        )


@worklist.command("rebuild")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON (and no progress bar).")
def rebuild_command(as_json: bool) -> None:
    """Rebuild the Redis worklist from cxr.studies.v1, cxr.predictions.v1 and cxr.verdicts.v1 alone.

    Unread studies come back with their priorities and tiers, read ones read with their verdicts; leases
    and activation maps do not. Safe to run twice and while workers run.
    """
    from tqdm import tqdm

    from priority_queue_api.rebuild import RebuildError, rebuild

    bars: list[tqdm[None]] = []

    def progress(total: int) -> Callable[[], None]:
        bar: tqdm[None] = tqdm(total=total, unit="event", desc="reading topics", file=sys.stderr)
        bars.append(bar)
        return lambda: bar.update(1)

    try:
        summary = rebuild(load_settings(), progress=None if as_json else progress)
    except RebuildError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        for bar in bars:
            bar.close()
    if as_json:
        click.echo(json.dumps(summary))
        return
    click.echo(
        f"rebuilt from {summary['studies']:.0f} studies, {summary['predictions']:.0f} predictions, "
        f"{summary['verdicts']:.0f} verdicts: {summary['unread']:.0f} unread, {summary['read']:.0f} read, "
        f"{summary['awaiting_score']:.0f} awaiting a score ({summary['seconds']:.1f} s)"
    )


@click.group()
def users() -> None:
    """Users of the worklist API and their tokens ($CXR_HOME/auth/users.json, tokens stored hashed)."""


@users.command("add")
@click.argument("name")
@click.option("--role", required=True, type=click.Choice([r.value for r in Role]))
@click.option(
    "--rotate", is_flag=True, help="The user exists: issue a new token (the old one stops working)."
)
@click.option("--json", "as_json", is_flag=True, help='Print {"name", "role", "token"}.')
def add(name: str, role: str, rotate: bool, as_json: bool) -> None:
    """Create a user and print its token, once."""
    path = users_file(load_settings().home)
    try:
        issued = add_user(path, name=name, role=Role(role), rotate=rotate)
    except UserStoreError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps({"name": issued.name, "role": issued.role.value, "token": issued.token}))
        return
    verb = "new token for" if rotate else "created"
    click.echo(f"{verb} {issued.name} ({issued.role.value}); token, shown only now:")
    click.echo(issued.token)


@users.command("list")
@click.option("--json", "as_json", is_flag=True)
def list_(as_json: bool) -> None:
    """Names and roles (never tokens)."""
    try:
        found = list_users(users_file(load_settings().home))
    except UserStoreError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps([{"name": u.name, "role": u.role.value} for u in found]))
        return
    for user in found:
        click.echo(f"{user.name}\t{user.role.value}")


@users.command("remove")
@click.argument("name")
def remove(name: str) -> None:
    """Delete a user; its token stops working at once."""
    try:
        remove_user(users_file(load_settings().home), name=name)
    except UserStoreError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"removed {name}")
