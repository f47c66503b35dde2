"""``cxr-triage rollout-worker``: carry out the online-evaluation policy's promote / rollback decisions.

Heavy imports (MLflow, Kafka) happen inside the command, so ``cxr-triage --help`` stays fast. With ``--once``
the first decision read (acted on or skipped) is printed on stdout as one JSON object.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
from types import FrameType

import click

from trainer.settings import load_trainer_settings

logger = logging.getLogger("trainer.rollout_worker")


def _stop_on_signals(stop: threading.Event) -> None:
    def handle(signum: int, _frame: FrameType | None) -> None:
        # A decision being carried out finishes first (a Triton switch takes seconds).
        logger.info("stopping after the current decision", extra={"signal": signal.Signals(signum).name})
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)


@click.command("rollout-worker")
@click.option("--once", is_flag=True, help="Handle one decision, print it as JSON, then exit.")
@click.option(
    "--timeout-s",
    type=click.FloatRange(min=0.0, min_open=True),
    default=None,
    help="Exit with status 1 after this many seconds without a decision (default: wait for ever).",
)
def rollout_worker(once: bool, timeout_s: float | None) -> None:
    """Consume cxr.model-decisions.v1: promote or roll back the shadow / canary challenger as the policy says."""
    from cxr_triage.logs import configure_logging
    from trainer.retrain_cli import _quiet_libraries
    from trainer.rollout_kafka import DecisionConsumer
    from trainer.rollout_ledger import DecisionLedger
    from trainer.rollout_metrics import RolloutMetrics
    from trainer.rollout_registry import MlflowRegistry
    from trainer.rollout_worker import DecisionExecutor
    from trainer.serving import TritonRepository

    configure_logging()
    _quiet_libraries()
    settings = load_trainer_settings()
    stop = threading.Event()
    _stop_on_signals(stop)
    metrics = RolloutMetrics()
    metrics.serve(host=settings.bind_host, port=settings.rollout_metrics_port)
    executor = DecisionExecutor(
        settings=settings,
        serving=TritonRepository(settings),
        registry=MlflowRegistry(settings),
        ledger=DecisionLedger(settings.rollout_ledger_path),
    )
    consumer = DecisionConsumer(settings, executor, metrics)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    try:
        while not stop.is_set():
            handled = consumer.next(timeout_s=1.0)
            if handled is None:
                if deadline is not None and time.monotonic() > deadline:
                    click.echo(f"no model decision within {timeout_s} s", err=True)
                    sys.exit(1)
                continue
            if once:
                click.echo(json.dumps(handled.to_dict()))
                return
            if timeout_s is not None:
                deadline = time.monotonic() + timeout_s
    finally:
        consumer.close()
