"""Single-node Apache Kafka (KRaft, broker and controller in one JVM) under ``$CXR_HOME/kafka``."""

from __future__ import annotations

import base64
import logging
import os
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_exponential

from cxr_triage import topics
from cxr_triage.settings import Address, Settings
from deploy.kafka_jars import ensure_kafka_jars, libs_dir
from deploy.probes import kafka_admin
from deploy.spec import Launch, SetupError

logger = logging.getLogger(__name__)

NODE_ID = 1
# Kafka's own launcher defaults, minus what only matters for big heaps; G1 starts as fast as Serial here.
JVM_FLAGS: tuple[str, ...] = (
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:+ExplicitGCInvokesConcurrent",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
)


class KafkaSetupError(SetupError):
    """The broker's storage or topics could not be prepared."""


def kafka_dir(settings: Settings) -> Path:
    return settings.home / "kafka"


def data_dir(settings: Settings) -> Path:
    return kafka_dir(settings) / "data"


def log4j_config() -> Path:
    return Path(str(resources.files("deploy") / "kafka" / "log4j2.properties"))


def render_server_properties(settings: Settings) -> str:
    """server.properties of a combined broker+controller.

    Clients are served on CXR_KAFKA_LISTEN_HOST (loopback unless set) at the port of the first bootstrap
    server, which is also the address the broker advertises. The controller only ever talks to this broker:
    it stays on loopback whatever the client listener.
    """
    served = settings.kafka_address
    listen = Address(settings.kafka_listen_host, served.port)
    controller = Address("127.0.0.1", settings.kafka_controller_port)
    props = {
        "process.roles": "broker,controller",
        "node.id": str(NODE_ID),
        # A static voter set (not --standalone) so that a changed controller port needs no reformat.
        "controller.quorum.voters": f"{NODE_ID}@{controller.netloc}",
        "listeners": f"PLAINTEXT://{listen.netloc},CONTROLLER://{controller.netloc}",
        "advertised.listeners": f"PLAINTEXT://{served.netloc}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(data_dir(settings)),
        "num.partitions": str(settings.kafka_partitions),
        "default.replication.factor": "1",
        "min.insync.replicas": "1",
        "auto.create.topics.enable": "false",
        "offsets.topic.replication.factor": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        # One broker, no peers to wait for: let the first consumer group form at once.
        "group.initial.rebalance.delay.ms": "0",
        "num.network.threads": "2",
        "num.io.threads": "4",
    }
    lines = ["# Written by `cxr-triage up` on every start; edit cxr-triage settings (CXR_*) instead."]
    lines += [f"{key}={value}" for key, value in props.items()]
    return "\n".join(lines) + "\n"


def new_cluster_id() -> str:
    """A Kafka cluster id: 16 random bytes, URL-safe base64 without padding (what StorageTool generates)."""
    while True:
        cid = base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")
        if not cid.startswith("-"):  # Kafka rejects ids that look like a command-line flag
            return cid


def _java() -> str:
    java = shutil.which("java")
    if java is None:
        raise KafkaSetupError("java is not installed (Kafka needs Java 17+): run `make setup`")
    return java


def _classpath(settings: Settings) -> str:
    return f"{libs_dir(settings.home)}/*"


def ensure_storage(settings: Settings) -> None:
    """Format the log directory once, with the cluster id kept in ``$CXR_HOME/kafka/cluster.id``."""
    if (data_dir(settings) / "meta.properties").is_file():
        return
    id_file = kafka_dir(settings) / "cluster.id"
    if id_file.is_file():
        cluster_id = id_file.read_text().strip()
    else:
        cluster_id = new_cluster_id()
        id_file.write_text(cluster_id + "\n")
    cmd = [
        _java(),
        f"-Dlog4j2.configurationFile={log4j_config()}",
        "-cp",
        _classpath(settings),
        "kafka.tools.StorageTool",
        "format",
        "--ignore-formatted",
        "-t",
        cluster_id,
        "-c",
        str(kafka_dir(settings) / "server.properties"),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise KafkaSetupError(
            f"formatting Kafka storage failed: {(done.stdout + done.stderr).strip()[-2000:]}"
        )
    logger.info("formatted Kafka storage", extra={"dir": str(data_dir(settings)), "cluster_id": cluster_id})


def prepare(settings: Settings) -> Launch:
    """Jars, server.properties and formatted storage in place; return the broker's command line."""
    ensure_kafka_jars(libs_dir(settings.home))
    data_dir(settings).mkdir(parents=True, exist_ok=True)
    config = kafka_dir(settings) / "server.properties"
    config.write_text(render_server_properties(settings))
    ensure_storage(settings)
    argv = [
        _java(),
        f"-Xmx{settings.kafka_heap}",
        *JVM_FLAGS,
        f"-Dlog4j2.configurationFile={log4j_config()}",
        f"-Dkafka.logs.dir={settings.logs_dir}",
        "-cp",
        _classpath(settings),
        "kafka.Kafka",
        str(config),
    ]
    return Launch(argv=argv, cwd=kafka_dir(settings))


# Answers a broker gives for a moment after it starts or creates a topic (KRaft metadata still spreading).
_TRANSIENT = frozenset(
    {
        "UNKNOWN_TOPIC_OR_PART",
        "LEADER_NOT_AVAILABLE",
        "NOT_CONTROLLER",
        "REQUEST_TIMED_OUT",
        "_TIMED_OUT",
        "_TRANSPORT",
        "_ALL_BROKERS_DOWN",
    }
)


def transient_kafka_error(exc: BaseException) -> bool:
    """Whether ``exc`` is an admin error that asking again shortly after is expected to clear."""
    from confluent_kafka import KafkaError, KafkaException

    if not isinstance(exc, KafkaException) or not exc.args or not isinstance(exc.args[0], KafkaError):
        return False
    error = exc.args[0]
    return bool(error.retriable()) or error.name() in _TRANSIENT


def ensure_topics(settings: Settings, *, timeout_s: float = 30.0, admin: Any = None) -> None:
    """Every topic of ``cxr_triage.topics.ALL`` present (replication 1) with its ``topics.CONFIGS``; idempotent.

    Missing topics are created with their configs; existing ones get any config that differs set again
    (incremental, so an operator's other topic settings stay). Kafka is the system of record the worklist is
    rebuilt from: a topic left at the broker's 7-day delete policy would lose studies silently. A broker that
    has just started (or just created a topic) may answer UNKNOWN_TOPIC_OR_PART for a while: the whole
    sequence is asked again until ``timeout_s``.
    """
    from confluent_kafka import KafkaException

    admin = admin or kafka_admin(settings.kafka_bootstrap_servers)
    try:
        for attempt in Retrying(
            retry=retry_if_exception(transient_kafka_error),
            stop=stop_after_delay(timeout_s),
            wait=wait_exponential(multiplier=0.2, max=2.0),
            before_sleep=lambda state: logger.info(
                "topics not ready yet; asking again",
                extra={
                    "attempt": state.attempt_number,
                    "error": str(state.outcome and state.outcome.exception()),
                },
            ),
            reraise=True,
        ):
            with attempt:
                _create_missing(admin, settings)
                _warn_on_partition_counts(admin, settings)
                _align_configs(admin)
    except KafkaException as exc:
        raise KafkaSetupError(f"cannot list, create or configure topics: {exc}") from exc


def _create_missing(admin: Any, settings: Settings) -> None:
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import NewTopic

    existing = admin.list_topics(timeout=5).topics
    missing = [name for name in topics.ALL if name not in existing]
    if not missing:
        return
    futures = admin.create_topics(
        [
            NewTopic(
                name,
                num_partitions=settings.kafka_partitions,
                replication_factor=1,
                config=dict(topics.CONFIGS.get(name, {})),
            )
            for name in missing
        ],
        operation_timeout=10,
    )
    for name, future in futures.items():
        try:
            future.result()
            logger.info("created topic", extra={"topic": name, "partitions": settings.kafka_partitions})
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise


def _warn_on_partition_counts(admin: Any, settings: Settings) -> None:
    from confluent_kafka import KafkaException

    for name in topics.ALL:
        meta = admin.list_topics(topic=name, timeout=5).topics[name]
        if meta.error is not None:
            raise KafkaException(meta.error)
        if len(meta.partitions) != settings.kafka_partitions:
            logger.warning(
                "topic has another partition count than configured (Kafka never shrinks a topic)",
                extra={
                    "topic": name,
                    "partitions": len(meta.partitions),
                    "configured": settings.kafka_partitions,
                },
            )


def topic_configs(admin: Any, names: Iterable[str]) -> dict[str, dict[str, str]]:
    """The effective value of every config of each topic (defaults included), as ``describe_configs`` says."""
    from confluent_kafka.admin import ConfigResource, ResourceType

    futures = admin.describe_configs([ConfigResource(ResourceType.TOPIC, name) for name in names])
    return {
        resource.name: {key: entry.value for key, entry in future.result(timeout=10).items()}
        for resource, future in futures.items()
    }


def config_drift(current: Mapping[str, Mapping[str, str | None]]) -> dict[str, dict[str, str]]:
    """Per topic, the ``topics.CONFIGS`` entries whose value ``current`` does not have."""
    drift = {}
    for name, wanted in topics.CONFIGS.items():
        have = current.get(name, {})
        differing = {key: value for key, value in wanted.items() if have.get(key) != value}
        if differing:
            drift[name] = differing
    return drift


def _align_configs(admin: Any) -> None:
    from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType

    drift = config_drift(topic_configs(admin, topics.CONFIGS))
    if not drift:
        return
    resources = [
        ConfigResource(
            ResourceType.TOPIC,
            name,
            incremental_configs=[
                ConfigEntry(key, value, incremental_operation=AlterConfigOpType.SET)
                for key, value in differing.items()
            ],
        )
        for name, differing in drift.items()
    ]
    for resource, future in admin.incremental_alter_configs(resources).items():
        future.result(timeout=10)
        logger.info("set topic configs", extra={"topic": resource.name, "configs": drift[resource.name]})
