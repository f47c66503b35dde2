"""``cxr-triage api run`` serves the worklist API; ``cxr-triage worklist`` prints it."""

from __future__ import annotations

import json

import click
import httpx

from cxr_triage.settings import load_settings


@click.group()
def api() -> None:
    """The worklist API service."""


@api.command("run")
def run() -> None:
    """Serve the API on 127.0.0.1:CXR_API_PORT."""
    import uvicorn

    from priority_queue_api.app import create_app

    settings = load_settings()
    uvicorn.run(create_app(settings), host=settings.host, port=settings.api_port, log_config=None)


@click.command()
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 500))
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON.")
def worklist(limit: int, as_json: bool) -> None:
    """Print the top of the worklist, highest priority first."""
    settings = load_settings()
    url = f"http://{settings.host}:{settings.api_port}/worklist"
    try:
        response = httpx.get(url, params={"limit": limit}, timeout=10.0)
    except httpx.HTTPError as exc:
        raise click.ClickException(f"worklist API at {url} is unreachable: {exc}") from exc
    if response.status_code != 200:
        raise click.ClickException(f"worklist API answered {response.status_code}: {response.text}")
    body = response.json()
    if as_json:
        click.echo(json.dumps(body, indent=2))
        return
    click.echo(f"{body['total']} studies on the worklist; top {len(body['items'])}:")
    click.echo(f"{'priority':>8}  {'study':<20}  {'model':<8}  top findings")
    for item in body["items"]:
        top = sorted(item["probabilities"].items(), key=lambda kv: kv[1], reverse=True)[:3]
        findings = ", ".join(f"{name} {p:.2f}" for name, p in top)
        click.echo(
            f"{item['priority']:8.3f}  {item['study_id'][:20]:<20}  v{item['model_version']:<7}  {findings}"
        )
