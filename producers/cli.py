"""``cxr-triage produce PATH...`` and ``produce --watch DIR``: publish chest X-rays from files and folders."""

from __future__ import annotations

import json
import socket
import sys
import time
from pathlib import Path

import click
from tqdm import tqdm

from cxr_triage.image_store import open_image_store
from cxr_triage.ingest.pseudonym import pseudonymiser
from cxr_triage.ingest.publisher import DeliveryFailed, EventPublisher
from cxr_triage.ingest.validate import iter_candidate_files
from cxr_triage.settings import Settings, load_settings
from producers.files import produce_paths
from producers.stopping import stop_on_signals
from producers.study_buffer import StudyBuffer
from producers.traffic import RateParam, TokenBucket


@click.command()
@click.argument("paths", nargs=-1, type=click.Path(exists=True, path_type=Path))
@click.option(
    "--json", "as_json", is_flag=True, help="Print a JSON summary (published, rejected with reasons)."
)
@click.option("--source", default=lambda: f"cli@{socket.gethostname()}", help="Producer name on the events.")
@click.option(
    "--watch",
    "watch_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Keep watching DIR (a PACS export folder) and publish each file once it is completely written.",
)
@click.option(
    "--rate", type=RateParam(), default=None, help="Publish at most R studies per second (5/s, 30/min)."
)
@click.option(
    "--burst",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Studies sent at once before --rate paces.",
)
@click.option(
    "--settle-s",
    type=click.FloatRange(min=0.0),
    default=2.0,
    show_default=True,
    help="--watch: a file is taken once its size and time have not changed for this long.",
)
@click.option(
    "--give-up-s",
    type=click.FloatRange(min=0.0),
    default=60.0,
    show_default=True,
    help="--watch: a still file that cannot be read is retried (a paused writer) until still this long.",
)
@click.option(
    "--quiet-s",
    type=click.FloatRange(min=0.0, min_open=True),
    default=None,
    help="A DICOM study is published once no image of it came for this long (default CXR_DICOM_QUIET_S); "
    "without --watch, for studies an interrupted run left behind.",
)
@click.option(
    "--progress/--no-progress", default=None, help="A progress bar over the files (default: on a terminal)."
)
def produce(
    paths: tuple[Path, ...],
    as_json: bool,
    source: str,
    watch_dir: Path | None,
    rate: float | None,
    burst: int,
    settle_s: float,
    give_up_s: float,
    quiet_s: float | None,
    progress: bool | None,
) -> None:
    """Publish PNG, JPEG and DICOM files (or folders of them) as studies; exit 1 if any was rejected.

    DICOM images of one study are published together as one study, under a keyed pseudonym of its
    StudyInstanceUID; a PNG or JPEG is a study of its own. Refused files go to the dead letter topic with the
    reason. Files are named in the output by their SHA-256 only (`sha256sum FILE` finds one).
    """
    if watch_dir is None and not paths:
        raise click.UsageError("give files or folders to publish, or --watch DIR")
    if watch_dir is not None and paths:
        raise click.UsageError("--watch takes one folder and no other paths")
    settings = load_settings()
    bucket = TokenBucket(rate, burst)
    try:
        if watch_dir is not None:
            quiet = quiet_s or settings.dicom_quiet_s
            _watch(settings, watch_dir, bucket, settle_s=settle_s, give_up_s=give_up_s, quiet_s=quiet)
            return
        buffer = StudyBuffer(settings.home / "producer" / "studies.sqlite3")
        show = sys.stderr.isatty() if progress is None else progress
        bar = tqdm(total=len(list(iter_candidate_files(paths))) if show else None, desc="reading files",
                   unit="file", file=sys.stderr, disable=not show, leave=False)  # fmt: skip
        try:
            with bar, EventPublisher(settings, client_id="cxr-producer") as publisher:
                summary = produce_paths(
                    paths=paths,
                    store=open_image_store(settings),
                    publisher=publisher,
                    pseudonyms=pseudonymiser(settings),
                    buffer=buffer,
                    source=source,
                    quiet_s=quiet_s or settings.dicom_quiet_s,
                    before_each=bucket.take,
                    after_file=bar.update,
                )
        finally:
            buffer.close_db()
    except DeliveryFailed as exc:
        raise click.ClickException(
            f"Kafka at {settings.kafka_bootstrap_servers} did not confirm delivery: {exc}"
        ) from exc
    if as_json:
        click.echo(json.dumps(summary.as_json(), indent=2))
    else:
        click.echo(
            f"published {len(summary.published)} image(s) as {summary.studies} stud(y/ies), "
            f"rejected {len(summary.rejected)}"
        )
        for item in summary.rejected:
            click.echo(f"  rejected sha256 {item['sha256'] or '(unreadable)'}: {item['reason']}", err=True)
    if summary.rejected:
        sys.exit(1)


def _watch(
    settings: Settings,
    folder: Path,
    bucket: TokenBucket,
    *,
    settle_s: float,
    give_up_s: float,
    quiet_s: float,
) -> None:
    from producers.metrics import ProducerMetrics
    from producers.watch import FolderWatcher, Ledger, state_path

    stop = stop_on_signals()
    metrics = ProducerMetrics()
    if settings.producer_metrics_port:
        metrics.serve(host=settings.bind_host, port=settings.producer_metrics_port)
    state = state_path(settings.home, folder)
    buffer, ledger = StudyBuffer(state), Ledger(state.with_suffix(".ledger.sqlite3"))
    with EventPublisher(settings, client_id="cxr-watch") as publisher:
        watcher = FolderWatcher(
            folder=folder,
            store=open_image_store(settings),
            publisher=publisher,
            buffer=buffer,
            ledger=ledger,
            pseudonyms=pseudonymiser(settings),
            bucket=bucket,
            settle_s=settle_s,
            give_up_s=give_up_s,
            quiet_s=quiet_s,
            metrics=metrics,
        )
        click.echo("watching the folder; Ctrl-C stops", err=True)
        try:
            while not stop.is_set():
                watcher.scan(time.monotonic())
                watcher.publish_due()
                stop.wait(0.5)
        finally:
            watcher.publish_due()
            buffer.close_db()
            ledger.close()
