"""Commands of the stream processors: ``cxr-triage processors run`` and ``cxr-triage feedback stats``."""

from __future__ import annotations

import json
import logging
from typing import Any

import click

# Framework loggers that narrate every rebalance and commit at INFO: kept at WARNING unless debugging.
_CHATTY = ("faust", "mode", "aiokafka", "kafka", "aiohttp", "asyncio")


def _logging_config(level: int) -> dict[str, Any]:
    """Mode's worker replaces the root handlers at start: give it ours (JSON lines on stderr)."""
    framework_level = logging.getLevelName(min(max(level, logging.WARNING), logging.CRITICAL))
    if level <= logging.DEBUG:
        framework_level = "DEBUG"
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "cxr_triage.logs.JsonFormatter"}},
        "handlers": {
            "stderr": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}
        },
        "root": {"level": logging.getLevelName(level), "handlers": ["stderr"]},
        "loggers": {name: {"level": framework_level} for name in _CHATTY},
    }


@click.group()
def processors() -> None:
    """The stream processors: verdicts -> feedback, online metrics, drift, retrain trigger."""


@processors.command("run")
def run() -> None:
    """Run the processors' Faust worker until SIGTERM / Ctrl-C (serves /metrics on CXR_PROCESSORS_PORT)."""
    import faust

    from stream_processors.app import create_app
    from stream_processors.config import load_processor_settings

    settings = load_processor_settings()
    level = logging.getLogger().level or logging.INFO
    app = create_app(settings)
    logging.getLogger(__name__).info(
        "processors starting",
        extra={
            "app_id": settings.processors_app_id,
            "port": settings.processors_port,
            "feedback_db": str(settings.feedback_db_path),
        },
    )
    worker = faust.Worker(
        app,
        loglevel=logging.getLevelName(level),
        logging_config=_logging_config(level),
        quiet=True,
        redirect_stdouts=False,
    )
    worker.execute_from_commandline()


@click.group()
def feedback() -> None:
    """The feedback store: training examples made from radiologists' verdicts."""


def _print_table(stats: dict[str, Any]) -> None:
    click.echo(f"examples            {stats['total']}")
    for version, n in stats["by_model_version"].items():
        click.echo(f"  model {version:<12} {n}")
    click.echo(f"unmatched waiting   {stats['unmatched_waiting']}")
    requests = stats["training_requests"]
    click.echo(f"training requests   pending {requests['pending']}, handled {requests['handled']}")
    drift = stats["drift"]
    if not drift:
        click.echo("drift               no report yet")
        return
    click.echo(f"drift               model {drift['model_version']}, alert {drift['alert']}")
    for score in drift["scores"]:
        flag = "  FLAGGED" if score["flagged"] else ""
        click.echo(f"  {score['feature']:<12} psi {score['psi']}  ks {score['ks_statistic']}{flag}")


@feedback.command("stats")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
@click.option(
    "--since-version",
    "since_version",
    default=None,
    help="Also count the examples stored since the first one this model version scored.",
)
def stats(as_json: bool, since_version: str | None) -> None:
    """Examples in the store, unmatched verdicts, training requests and the last drift scores."""
    import sqlite3

    from cxr_triage.feedback.store import FeedbackStore, FeedbackStoreUnavailable
    from cxr_triage.settings import load_settings
    from stream_processors.status import feedback_stats

    path = load_settings().feedback_db_path
    try:
        # Read-only: a wrong CXR_HOME / CXR_FEEDBACK_DB is reported, never answered by a new empty store.
        store = FeedbackStore.open_existing(path)
        document = feedback_stats(store)
        if since_version is not None:
            document["since_version"] = {
                "model_version": since_version,
                "examples": store.count_since_model_version(since_version),
            }
    except FeedbackStoreUnavailable as exc:
        raise click.ClickException(f"{exc} (set by CXR_FEEDBACK_DB or CXR_HOME)") from exc
    except sqlite3.DatabaseError as exc:
        raise click.ClickException(f"cannot read the feedback store at {path}: {exc}") from exc
    if as_json:
        click.echo(json.dumps(document, default=str))
    else:
        _print_table(document)
        if since_version is not None:
            click.echo(f"since model {since_version:<6} {document['since_version']['examples']} examples")
