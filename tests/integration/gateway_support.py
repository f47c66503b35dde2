"""A DICOM gateway process for tests, against the session's private Kafka broker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import AE, StoragePresentationContexts
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from cxr_triage import topics
from cxr_triage.ingest.pseudonym import pseudonymiser
from cxr_triage.settings import Settings
from deploy.testing import free_ports, stack_env
from tests.integration.conftest import wait_for_port
from tests.integration.kafka_support import KafkaBroker, read_topic

AE_TITLE = "CXR_TEST_GW"


@dataclass
class Gateway:
    home: Path
    env: dict[str, str]
    kafka: KafkaBroker
    log: Path
    process: subprocess.Popen[bytes] | None = None
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def port(self) -> int:
        return int(self.env["CXR_DICOM_PORT"])

    @property
    def metrics_port(self) -> int:
        return int(self.env["CXR_GATEWAY_METRICS_PORT"])

    def pseudonym(self, uid: str) -> str:
        """The study id the gateway gives a StudyInstanceUID (its key is in the gateway's state folder)."""
        settings = Settings(home=self.home, pseudonym_key=None)
        return pseudonymiser(settings).uid(uid)

    def study(self, uid: str, images: int = 1, timeout_s: float = 40.0) -> dict[str, Any]:
        """The latest event of study ``uid`` once it has ``images`` images."""
        study_id = self.pseudonym(uid)
        found = self.studies(
            lambda f: any(m["study_id"] == study_id and len(m["images"]) >= images for m in f), timeout_s
        )
        versions = [m for m in found if m["study_id"] == study_id]
        assert versions and len(versions[-1]["images"]) >= images, f"study not published with {images} images"
        return versions[-1]

    def versions(self, uid: str) -> list[dict[str, Any]]:
        study_id = self.pseudonym(uid)
        return [m for m in self.studies(lambda _: False, timeout_s=5) if m["study_id"] == study_id]

    def start(self, **settings: str) -> None:
        env = {**self.env, **{f"CXR_{k.upper()}": v for k, v in settings.items()}}
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "cxr_triage", "dicom-gateway"], env=env, stdout=log, stderr=log
            )
        wait_for_port(self.port, timeout_s=60)
        wait_for_port(self.metrics_port, timeout_s=30)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, sig)
            self.process.wait(timeout=30)
        self.process = None

    def studies(self, until: Any, timeout_s: float = 30.0) -> list[dict[str, Any]]:
        """Study events this gateway published (the session's broker holds other tests' too)."""
        mine = lambda found: [m for m in found if m.get("source") == "dicom-gateway"]  # noqa: E731
        return mine(
            read_topic(self.kafka.bootstrap, topics.STUDIES, lambda f: until(mine(f)), timeout_s=timeout_s)
        )

    def dead_letters(self, until: Any, timeout_s: float = 20.0) -> list[dict[str, Any]]:
        mine = lambda found: [m for m in found if m.get("source") == "dicom-gateway"]  # noqa: E731
        return mine(
            read_topic(self.kafka.bootstrap, topics.DLQ, lambda f: until(mine(f)), timeout_s=timeout_s)
        )


def gateway_env(home: Path, kafka: KafkaBroker) -> dict[str, str]:
    env = stack_env(home)
    dicom, metrics = free_ports(2)
    env.update(
        {
            "CXR_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap,
            "CXR_DICOM_PORT": str(dicom),
            "CXR_GATEWAY_METRICS_PORT": str(metrics),
            "CXR_DICOM_AE_TITLE": AE_TITLE,
            "CXR_DICOM_QUIET_S": "30",
            "CXR_DICOM_NETWORK_TIMEOUT_S": "4",
        }
    )
    return env


def scu(port: int, *, contexts: list[Any] | None = None) -> Any:
    """A pynetdicom association to the gateway (the tests' own sender, where dcmtk cannot do the fault)."""
    ae = AE(ae_title="TEST_SCU")
    for context in contexts or StoragePresentationContexts:
        ae.add_requested_context(context.abstract_syntax if hasattr(context, "abstract_syntax") else context)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title=AE_TITLE)
    assert assoc.is_established, "the gateway refused the association"
    return assoc


def store_status(assoc: Any, ds: Dataset) -> tuple[int, str]:
    status = assoc.send_c_store(ds)
    assert status is not None and "Status" in status, "no C-STORE response"
    return int(status.Status), str(status.get("ErrorComment", ""))


def send_part_of(assoc: Any, ds: Dataset, *, fraction: float = 0.5) -> int:
    """Start a C-STORE of ``ds`` and stop after ``fraction`` of its P-DATA fragments: a transfer cut short.

    Returns the number of fragments the whole instance takes (at least 2, or the cut would not be mid-way).
    """
    context = next(c for c in assoc.accepted_contexts if c.abstract_syntax == ds.SOPClassUID)
    syntax = UID(context.transfer_syntax[0])
    request = C_STORE()
    request.MessageID = 1
    request.AffectedSOPClassUID = ds.SOPClassUID
    request.AffectedSOPInstanceUID = ds.SOPInstanceUID
    request.Priority = 2
    request.DataSet = BytesIO(encode(ds, syntax.is_implicit_VR, syntax.is_little_endian))
    message = C_STORE_RQ()
    message.primitive_to_message(request)
    fragments = list(message.encode_msg(context.context_id, assoc.acceptor.maximum_length))
    assert len(fragments) >= 2, "the instance fits one fragment: it cannot be cut mid-transfer"
    for fragment in fragments[: max(1, int(len(fragments) * fraction))]:
        assoc.dul.send_pdu(fragment)
    return len(fragments)


def wait_until(check: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
