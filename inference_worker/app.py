"""Wires one inference worker process: Kafka consumer and producer, Triton, Redis, image store, metrics."""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

from confluent_kafka import Consumer, Producer

from cxr_triage.image_store import open_image_store
from cxr_triage.kafka_config import consumer_config, producer_config
from cxr_triage.model.serving import ServingSettings
from cxr_triage.redis_client import open_redis
from cxr_triage.redis_keys import RedisKeys
from cxr_triage.settings import Settings
from cxr_triage.sla import SlaPolicy
from inference_worker.challenger import TritonChallenger
from inference_worker.config import WorkerSettings
from inference_worker.consumer import Backoff, InferenceWorker
from inference_worker.errors import ModelMismatch
from inference_worker.metrics import MetricsServer, WorkerMetrics
from inference_worker.publisher import KafkaPublisher
from inference_worker.triton_client import TritonScorer
from inference_worker.worklist import RedisWorklist

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_MODEL_MISMATCH = 2


def install_stop_handlers(stop: threading.Event) -> None:
    def handle(signum: int, _frame: FrameType | None) -> None:
        logger.info("stopping after the current batch", extra={"signal": signal.Signals(signum).name})
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)


def kafka_consumer_config(settings: Settings, worker: WorkerSettings, *, client_id: str) -> dict[str, object]:
    config: dict[str, object] = consumer_config(settings, group_id=settings.worker_group, client_id=client_id)
    # The worker holds one batch at a time; librdkafka's prefetch must not hold 64 MiB (its default) either.
    config["queued.max.messages.kbytes"] = worker.fetch_queue_kbytes
    config["queued.min.messages"] = max(4 * settings.worker_max_batch, 100)
    return config


def run_worker(
    settings: Settings,
    *,
    index: int = 0,
    stop: threading.Event | None = None,
    worker_settings: WorkerSettings | None = None,
    serving: ServingSettings | None = None,
) -> int:
    """Run worker ``index`` until SIGTERM/SIGINT (or ``stop``); returns the process exit code."""
    options = worker_settings or WorkerSettings()
    serving = serving or ServingSettings()
    if stop is None:
        stop = threading.Event()
        install_stop_handlers(stop)
    client_id = f"cxr-worker-{index}"
    metrics = WorkerMetrics()
    server: MetricsServer | None = None
    if settings.worker_metrics_port:
        server = metrics.serve(host=settings.bind_host, port=settings.worker_metrics_port + index)

    scorer = TritonScorer(
        settings.triton_grpc_url,
        settings.model_name,
        timeout_s=options.triton_timeout_s,
        max_batch_size=serving.max_batch_size,
        want_cams=options.store_cams,
    )
    try:
        if not scorer.wait_until_ready(stop=stop):
            return EXIT_OK
    except ModelMismatch as exc:
        logger.error("served model does not fit this worker", extra={"error": str(exc)})
        return EXIT_MODEL_MISMATCH

    challenger = TritonChallenger(
        settings.triton_grpc_url,
        settings.model_name,
        timeout_s=options.triton_timeout_s,
        max_batch_size=serving.max_batch_size,
        want_cams=options.store_cams,
        refresh_s=options.rollout_refresh_s,
    )
    kafka_log = logging.getLogger("inference_worker.librdkafka")  # librdkafka's own lines, as JSON logs
    consumer = Consumer(kafka_consumer_config(settings, options, client_id=client_id), logger=kafka_log)
    publisher = KafkaPublisher(
        lambda: Producer(producer_config(settings, client_id=client_id), logger=kafka_log)
    )
    redis_client = open_redis(
        settings, socket_timeout=5.0, socket_connect_timeout=5.0, health_check_interval=30
    )
    policy = SlaPolicy()  # maximum waits, and the tier thresholds of a model that states none
    worker = InferenceWorker(
        consumer=consumer,
        scorer=scorer,
        worklist=RedisWorklist(redis_client, RedisKeys(settings.redis_key_prefix), policy=policy),
        publisher=publisher,
        store=open_image_store(settings),
        metrics=metrics,
        model_name=settings.model_name,
        sla=policy,
        max_batch=settings.worker_max_batch,
        max_wait_s=settings.worker_max_wait_ms / 1000,
        stop=stop,
        priority_weights=options.weights,
        backoff=Backoff(maximum_s=options.backoff_max_s),
        lag_refresh_s=options.lag_refresh_s,
        challenger=challenger,
    )
    logger.info(
        "worker started",
        extra={"index": index, "group": settings.worker_group, "max_batch": settings.worker_max_batch},
    )
    try:
        worker.run()
    finally:
        consumer.close()  # leaves the group now, so the partitions move without waiting for a timeout
        publisher.close()
        redis_client.close()
        scorer.close()
        challenger.close()
        if server is not None:
            server.close()
        logger.info("worker stopped", extra={"index": index})
    return EXIT_OK
