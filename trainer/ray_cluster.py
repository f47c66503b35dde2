"""The Ray cluster a training run uses: an existing one (``CXR_RAY_ADDRESS``) or a private local one."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

import ray

from trainer.settings import TrainerSettings

logger = logging.getLogger(__name__)

# Ray Train's placement-group cleaner asks the State API every few seconds whether the controller lives; without
# the dashboard (left out on purpose: 2 cores) that API is absent and each poll logs the same warning.
_STATE_API_LOGGER = "ray.train.v2._internal.execution.controller.placement_group_cleaner"


class _DropStateApiWarnings(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "State API may be temporarily unavailable" not in record.getMessage()


def quiet_worker_logs() -> None:
    """Runs in every Ray worker process of a local cluster (``worker_process_setup_hook``)."""
    logging.getLogger(_STATE_API_LOGGER).addFilter(_DropStateApiWarnings())


def framework_output() -> bool:
    """Whether Ray's own output reaches this process (``log_to_driver``, Ray Train's INFO lines): at ``--log-level
    DEBUG`` only. Forwarded, every ``TrainingReport(...)`` (logged outside ``ray.train``, which its LoggingConfig
    cannot quiet), C++ core worker errors about Ray's own actors and its bar manager's blank lines reach the
    terminal; otherwise they stay in the cluster's log files and the driver draws its own epoch bar."""
    return logger.isEnabledFor(logging.DEBUG)


@contextmanager
def ray_session(settings: TrainerSettings, *, num_cpus: int | None = None) -> Iterator[None]:
    """Connect to or start Ray; a cluster started here is shut down on exit, one found running is left."""
    if ray.is_initialized():
        yield
        return
    if settings.ray_address:
        ray.init(address=settings.ray_address, log_to_driver=framework_output())
    else:
        # Ray 2.60 turns token auth on by default; a private loopback cluster has nobody to keep out.
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        settings.ray_dir.mkdir(parents=True, exist_ok=True)
        # Ray keeps sockets and logs under RAY_TMPDIR (default /tmp/ray, shared by every user of the machine).
        os.environ.setdefault("RAY_TMPDIR", str(settings.ray_dir))
        ray.init(
            num_cpus=num_cpus or settings.ray_num_cpus,
            include_dashboard=False,
            log_to_driver=framework_output(),
            configure_logging=False,
            runtime_env={"worker_process_setup_hook": "trainer.ray_cluster.quiet_worker_logs"},
        )
        logger.info("local Ray cluster started", extra={"num_cpus": num_cpus or settings.ray_num_cpus})
    try:
        yield
    finally:
        ray.shutdown()
