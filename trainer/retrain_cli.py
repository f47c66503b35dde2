"""``cxr-triage retrain-worker``: turn training requests into challengers, gate them, publish the outcome.

Heavy imports (torch, Ray, MLflow) happen inside the command, so ``cxr-triage --help`` stays fast. Progress is
one JSON log line per step on stderr (request received, training, gate decided, result published); with
``--once`` the handled request is printed on stdout as one JSON object.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from types import FrameType
from typing import TYPE_CHECKING

import click

from trainer.settings import load_trainer_settings

if TYPE_CHECKING:
    from cxr_triage.events import TrainingRequestEventV1, TrainingResultEventV1

logger = logging.getLogger("trainer.retrain_worker")

# Libraries that log every request or artifact at INFO: the worker's own lines are the progress report.
_CHATTY = ("mlflow", "ray", "urllib3", "alembic", "botocore", "filelock")


def _quiet_libraries() -> None:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for name in _CHATTY:
        logging.getLogger(name).setLevel(logging.WARNING)


def _stop_on_signals(stop: threading.Event) -> None:
    def handle(signum: int, _frame: FrameType | None) -> None:
        # A request being trained on finishes first; killing the worker instead leaves it uncommitted, and
        # the next start trains it again (at-least-once).
        logger.info("stopping after the current request", extra={"signal": signal.Signals(signum).name})
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)


@click.command("retrain-worker")
@click.option("--once", is_flag=True, help="Handle one training request, print it as JSON, then exit.")
@click.option(
    "--timeout-s",
    type=click.FloatRange(min=0.0, min_open=True),
    default=None,
    help="Exit with status 1 after this many seconds without a request (default: wait for ever).",
)
def retrain_worker(once: bool, timeout_s: float | None) -> None:
    """Consume cxr.training-requests.v1: train on public + feedback data on Ray, gate on held-out feedback."""
    from confluent_kafka import KafkaException

    from cxr_triage.feedback.store import FeedbackStore
    from cxr_triage.logs import configure_logging
    from trainer.retrain import Retrainer, finished
    from trainer.retrain_kafka import (
        RequestConsumer,
        RequestProcessor,
        ResultPublisher,
        ResultsHistory,
        describe,
    )
    from trainer.retrain_metrics import RetrainMetrics
    from trainer.retrain_steps import RegistrySteps

    configure_logging()
    _quiet_libraries()
    settings = load_trainer_settings()
    stop = threading.Event()
    _stop_on_signals(stop)
    metrics = RetrainMetrics()
    metrics.serve(host=settings.bind_host, port=settings.retrain_metrics_port)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s

    history = ResultsHistory(settings)
    while True:  # Kafka may start after this worker (or restart): wait for it rather than exit
        try:
            history.refresh()
            break
        except KafkaException as exc:
            if stop.is_set() or (deadline is not None and time.monotonic() > deadline):
                raise click.ClickException(f"Kafka does not answer: {exc}") from exc
            logger.warning("waiting for Kafka", extra={"error": str(exc)})
            time.sleep(2.0)
    logger.info("answered requests read", extra={"answered": len(history)})

    retrainer = Retrainer(settings, FeedbackStore(settings.feedback_db_path), RegistrySteps(settings))

    def handle(request: TrainingRequestEventV1) -> TrainingResultEventV1:
        metrics.busy.set(1)
        logger.info(
            "training request received", extra={"request_id": request.request_id, "reason": request.reason}
        )
        try:
            result = retrainer.handle(request)
        finally:
            metrics.busy.set(0)
        metrics.last_duration.set(finished(result))
        return result

    publish = ResultPublisher(settings)
    consumer = RequestConsumer(settings, settings.retrain_group, RequestProcessor(handle, history, publish))
    try:
        while not stop.is_set():
            handled = consumer.next(timeout_s=1.0)
            if handled is None:
                if deadline is not None and time.monotonic() > deadline:
                    click.echo(f"no training request within {timeout_s} s", err=True)
                    sys.exit(1)
                continue
            what, result = handled
            metrics.requests.labels(outcome=what).inc()
            if result is not None:
                metrics.last_finished.set(time.time())
                logger.info(
                    "result published",
                    extra={"request_id": result.request_id, "outcome": result.outcome, "reason": result.reason,
                           "seconds": round(finished(result), 1)},
                )  # fmt: skip
            if once:
                click.echo(describe(handled))
                return
            if timeout_s is not None:
                deadline = time.monotonic() + timeout_s
    finally:
        consumer.close()
        history.close()
