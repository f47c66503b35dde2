"""The Faust app of the stream processors: built by a factory, never at import (no global app object)."""

from __future__ import annotations

from pathlib import Path

import faust

from cxr_triage.feedback.store import FeedbackStore
from cxr_triage.image_store import open_image_store
from stream_processors.agents import wire
from stream_processors.config import ProcessorSettings
from stream_processors.metrics import ProcessorMetrics
from stream_processors.monitors import Monitors
from stream_processors.rewind import guard_against_skips


def datadir(settings: ProcessorSettings) -> Path:
    path = settings.home / "processors" / settings.processors_app_id
    path.parent.mkdir(parents=True, exist_ok=True)  # Faust makes the last level only
    return path


def create_app(settings: ProcessorSettings, *, metrics: ProcessorMetrics | None = None) -> faust.App:
    """The processors' app: tables in memory, recovered from their changelog topics on start."""
    app = faust.App(
        settings.processors_app_id,
        broker=[f"kafka://{server}" for server in settings.kafka_bootstrap_servers.split(",")],
        store="memory://",
        # Faust's own folder (table metadata) under the state home, never `<app id>-data/` in the cwd.
        datadir=datadir(settings),
        topic_partitions=settings.kafka_partitions,
        topic_replication_factor=1,
        key_serializer="raw",
        value_serializer="raw",
        consumer_auto_offset_reset="earliest",
        # A processor killed without leaving its group holds its partitions until the session times out;
        # Faust's default (60 s) would stall the feedback loop that long after a crash, the workers' is 10 s.
        broker_session_timeout=10.0,
        broker_heartbeat_interval=3.0,
        # Static membership (one worker process per app id): a restarted processor takes its predecessor's
        # place in the group at once, with no rebalance while the killed member's session runs out.
        consumer_group_instance_id=f"{settings.processors_app_id}-0",
        producer_acks=-1,
        web_bind=settings.bind_host,
        web_host=settings.bind_host,
        web_port=settings.processors_port,
        # Only our own /metrics page, not Faust's debugging views (tables by key would serve study ids).
        web_graph_enabled=False,
        web_tables_enabled=False,
        web_router_enabled=False,
        web_stats_enabled=False,
        web_metrics_enabled=False,
        # The join's ordering needs one actor per agent; one worker process per app id (SQLite, one writer).
        topic_disable_leader=True,
    )
    monitors = Monitors(
        settings,
        store=FeedbackStore(settings.feedback_db_path),
        metrics=metrics or ProcessorMetrics(),
        images=open_image_store(settings),
    )
    # A processor killed between storing an example and the trigger check after it decides now, on the examples
    # stored before the crash, as it would have without the crash (the first check after the start publishes it).
    monitors.check_trigger()
    wire(app, settings, monitors)
    guard_against_skips(app)
    return app
