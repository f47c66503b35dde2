"""``cxr-triage produce PATH...``: publish chest X-rays from files and folders."""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

import click

from cxr_triage.image_store import open_image_store
from cxr_triage.ingest.publisher import DeliveryFailed, EventPublisher
from cxr_triage.ingest.service import produce_paths
from cxr_triage.settings import load_settings


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option(
    "--json", "as_json", is_flag=True, help="Print a JSON summary (published, rejected with reasons)."
)
@click.option("--source", default=lambda: f"cli@{socket.gethostname()}", help="Producer name on the events.")
def produce(paths: tuple[Path, ...], as_json: bool, source: str) -> None:
    """Publish PNG, JPEG and DICOM files (or folders of them) as studies; exit 1 if any was rejected."""
    settings = load_settings()
    store = open_image_store(settings)
    try:
        with EventPublisher(settings, client_id="cxr-producer") as publisher:
            summary = produce_paths(paths=paths, store=store, publisher=publisher, source=source)
    except DeliveryFailed as exc:
        raise click.ClickException(
            f"Kafka at {settings.kafka_bootstrap_servers} did not confirm delivery: {exc}"
        ) from exc
    if as_json:
        click.echo(json.dumps(summary.as_json(), indent=2))
    else:
        click.echo(f"published {len(summary.published)}, rejected {len(summary.rejected)}")
        for item in summary.rejected:
            click.echo(f"  rejected {item['path']}: {item['reason']}", err=True)
    if summary.rejected:
        sys.exit(1)
