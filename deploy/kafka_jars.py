"""Resolve the Kafka broker's jars from Maven Central with ``deploy/kafka/pom.xml`` (``python -m deploy.kafka_jars``).

The jars land in ``$CXR_HOME/kafka/libs``; a stamp holding the pom's hash makes a second call free and a
changed pom (another Kafka version) resolve again.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

from cxr_triage.settings import load_settings
from deploy.spec import SetupError

logger = logging.getLogger(__name__)

STAMP = ".resolved"


class KafkaJarsError(SetupError):
    """Maven could not provide the broker's jars."""


def pom_path() -> Path:
    return Path(str(resources.files("deploy") / "kafka" / "pom.xml"))


def libs_dir(home: Path) -> Path:
    return home / "kafka" / "libs"


def _pom_digest() -> str:
    return hashlib.sha256(pom_path().read_bytes()).hexdigest()


def jars_present(libs: Path) -> bool:
    stamp = libs / STAMP
    return stamp.is_file() and stamp.read_text().strip() == _pom_digest()


def ensure_kafka_jars(libs: Path) -> Path:
    """Copy the broker's runtime classpath into ``libs`` unless it is already there; return ``libs``."""
    if jars_present(libs):
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise KafkaJarsError("Maven (mvn) is not installed: run `make setup` (or apt-get install maven)")
    staging = libs.with_name(libs.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        mvn,
        "-B",
        "-q",
        "-Dstyle.color=never",
        "-f",
        str(pom_path()),
        "dependency:copy-dependencies",
        "-DincludeScope=runtime",
        f"-DoutputDirectory={staging}",
    ]
    logger.info("resolving Kafka jars with Maven", extra={"dest": str(libs)})
    started = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0 or not any(staging.glob("kafka_2.13-*.jar")):
        tail = (done.stdout + done.stderr).strip()[-2000:]
        raise KafkaJarsError(f"`{' '.join(cmd)}` failed (exit {done.returncode}):\n{tail}")
    (staging / STAMP).write_text(_pom_digest() + "\n")
    shutil.rmtree(libs, ignore_errors=True)
    staging.replace(libs)
    logger.info(
        "Kafka jars ready", extra={"dest": str(libs), "seconds": round(time.monotonic() - started, 1)}
    )
    return libs


def main() -> None:
    """Entry point of ``python -m deploy.kafka_jars [DIR]`` (default ``$CXR_HOME/kafka/libs``)."""
    target = Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else libs_dir(load_settings().home)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        ensure_kafka_jars(target)
    except KafkaJarsError as exc:
        sys.exit(str(exc))
    sys.stdout.write(f"Kafka jars in {target}\n")


if __name__ == "__main__":
    main()
