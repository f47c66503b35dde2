"""The driver's epoch bar while Ray workers train: read from the MLflow run rank 0 logs each epoch into.

Ray's forwarding of worker output to this terminal is off (it carries every framework line, see
``ray_cluster``), so the workers' own bars cannot reach it; the run's metrics can, from any cluster.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tqdm import tqdm

logger = logging.getLogger(__name__)

POLL_S = 2.0


@contextmanager
def epoch_bar(tracking_info: dict[str, str] | None, *, epochs: int, enabled: bool) -> Iterator[None]:
    """An epoch bar with the last loss and validation AUROC, for as long as the block runs."""
    if not enabled or not tracking_info:
        yield
        return
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_info["tracking_uri"])
    stop = threading.Event()
    with tqdm(total=epochs, desc="epochs", unit="epoch", file=sys.stderr, leave=False) as bar:
        thread = threading.Thread(
            target=_follow, args=(client, tracking_info["run_id"], bar, stop), name="epoch-bar", daemon=True
        )
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=POLL_S + 5)
            _update(client, tracking_info["run_id"], bar)


def _follow(client: Any, run_id: str, bar: tqdm[Any], stop: threading.Event) -> None:
    while not stop.wait(POLL_S):
        _update(client, run_id, bar)


def _update(client: Any, run_id: str, bar: tqdm[Any]) -> None:
    try:
        auroc = client.get_metric_history(run_id, "val_auroc_abnormal")
        loss = client.get_metric_history(run_id, "train_loss")
    except Exception as exc:  # MLflow busy or restarting: the bar waits, the training goes on
        logger.debug("epoch bar not updated", extra={"error": type(exc).__name__})
        return
    if not auroc:
        return
    latest = max(auroc, key=lambda m: m.step)
    bar.n = min(int(latest.step), int(bar.total or latest.step))
    last_loss = max(loss, key=lambda m: m.step).value if loss else float("nan")
    bar.set_postfix_str(f"loss {last_loss:.3f} val AUROC {latest.value:.3f}", refresh=False)
    bar.refresh()
