"""The DICOM C-STORE gateway: modalities and PACS send chest radiographs; complete studies go to Kafka.

Per instance: the SOP class is checked, the header read and pseudonymised, the pixels decoded once (what the
worker could not read is refused here, with a DIMSE status the sender sees), then the original instance goes
to the image store and the image to the study buffer, and only then is the instance acknowledged. A
publisher thread sends each study once it is complete (quiet for ``dicom_quiet_s``, or its association
ended), with all of its images, and marks it published once Kafka acknowledged it. Every refusal also goes to
the dead letter topic with its reason and the content hash; no identifier or file path is ever logged.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Final, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge
from pydicom.dataset import Dataset

from cxr_triage.events import DeadLetterEventV1, utcnow
from cxr_triage.image_store import ImageStore
from cxr_triage.imaging import ImageRejected
from cxr_triage.ingest.dicom_header import check_sop_class
from cxr_triage.ingest.pseudonym import Pseudonymiser
from cxr_triage.ingest.publisher import EventPublisher
from cxr_triage.ingest.service import refused
from cxr_triage.ingest.validate import SUFFIX_FOR, prepare_bytes, read_capped, sha256_of
from producers.study_buffer import StudyBuffer, publish_complete

logger = logging.getLogger(__name__)

SOURCE: Final = "dicom-gateway"
# C-STORE statuses (PS3.4 GG.4-1, PS3.7 C.4.1.1.4): what a sender's log shows next to our reason.
SUCCESS: Final = 0x0000
SOP_CLASS_NOT_SUPPORTED: Final = 0x0122
OUT_OF_RESOURCES: Final = 0xA700
DOES_NOT_MATCH_SOP_CLASS: Final = 0xA900
CANNOT_UNDERSTAND: Final = 0xC000
STATUS_FOR_KIND: Final = {
    "unsupported": CANNOT_UNDERSTAND + 1,
    "mismatch": DOES_NOT_MATCH_SOP_CLASS,
    "unreadable": CANNOT_UNDERSTAND,
    "too_large": OUT_OF_RESOURCES,
}
REMEMBER_PUBLISHED: Final = timedelta(hours=24)
# How an association ended: the metric label ``ending``.
Ending = Literal["released", "aborted", "timed_out"]


INSTANCE_OUTCOMES = ("stored", "duplicate", "rejected", "failed", "incomplete")


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.instances = Counter(
            "cxr_gateway_instances", "DICOM instances received, by outcome", ["outcome"], registry=r
        )
        for outcome in INSTANCE_OUTCOMES:  # every series exists from the start, at 0
            self.instances.labels(outcome)
        self.rejected = Counter(
            "cxr_gateway_rejected", "DICOM instances refused, by kind of reason", ["kind"], registry=r
        )
        self.associations = Counter(
            "cxr_gateway_associations", "Associations, by how they ended", ["ending"], registry=r
        )
        self.studies_published = Counter(
            "cxr_gateway_studies_published", "Study events published (a late image republishes)", registry=r
        )
        self.pending = Gauge(
            "cxr_gateway_pending_studies", "Studies with images not yet published", registry=r
        )


def _transfer_in_flight(assoc: Any) -> bool:
    """A DIMSE message (a C-STORE's command or data set) was partly received when the association ended.

    pynetdicom gathers P-DATA fragments in ``dimse.message`` and clears it once a message is whole; it has no
    public way to ask, and this is the one place that reads it.
    """
    return getattr(getattr(assoc, "dimse", None), "message", None) is not None


def _status(code: int, reason: str) -> Dataset:
    status = Dataset()
    status.Status = code
    status.ErrorComment = reason[:64]  # LO: 64 characters at most
    return status


@dataclass
class DicomGateway:
    store: ImageStore
    publisher: EventPublisher
    buffer: StudyBuffer
    pseudonyms: Pseudonymiser
    metrics: GatewayMetrics
    quiet_s: float
    _studies_by_association: dict[int, set[str]] = field(default_factory=lambda: defaultdict(set))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def handle_echo(self, _event: Any) -> int:
        return SUCCESS

    def handle_store(self, event: Any) -> int | Dataset:
        try:
            check_sop_class(str(event.request.AffectedSOPClassUID))
        except ImageRejected as exc:
            return self._refuse(exc, None, status=SOP_CLASS_NOT_SUPPORTED)
        try:
            data = read_capped(Path(event.dataset_path))
        except ImageRejected as exc:
            return self._refuse(exc, None)
        try:
            prepared = prepare_bytes(data, self.pseudonyms)
        except ImageRejected as exc:
            return self._refuse(exc, sha256_of(data))
        try:
            uri = self.store.put(prepared.data, suffix=SUFFIX_FOR[prepared.content_type])
            added = self.buffer.add(prepared.study_id, prepared.image(uri), prepared.pseudonyms)
        except OSError as exc:  # a full disk: the sender keeps the instance and retries later
            logger.error("instance not stored", extra={"error": type(exc).__name__})
            self.metrics.instances.labels("failed").inc()
            return _status(OUT_OF_RESOURCES, "the gateway cannot store the instance now; retry later")
        with self._lock:
            self._studies_by_association[id(event.assoc)].add(prepared.study_id)
        self.metrics.instances.labels("stored" if added else "duplicate").inc()
        return SUCCESS

    def _refuse(self, exc: ImageRejected, sha256: str | None, *, status: int | None = None) -> Dataset:
        self.metrics.instances.labels("rejected").inc()
        self.metrics.rejected.labels(exc.kind).inc()
        refused(exc.reason, sha256=sha256, publisher=self.publisher, source=SOURCE, kind=exc.kind)
        return _status(STATUS_FOR_KIND[exc.kind] if status is None else status, exc.reason)

    def association_ended(self, event: Any, ending: Ending) -> None:
        """The sender released (or lost) the association: its studies are complete as far as it is concerned.

        What it acknowledged is kept and published. An instance it was still sending when the association
        was aborted or timed out was never acknowledged, so the sender still holds it: a dead letter says so.
        """
        assoc = event.assoc
        if ending == "aborted" and assoc.dul.idle_timer_expired():
            ending = "timed_out"  # the gateway cut off a silent sender (dicom_network_timeout_s)
        with self._lock:
            studies = self._studies_by_association.pop(id(assoc), set())
        self.buffer.close(studies)
        self.metrics.associations.labels(ending).inc()
        logger.info("association ended", extra={"ending": ending, "studies": len(studies)})
        if ending != "released" and _transfer_in_flight(assoc):
            self._lost_in_flight(ending)

    def _lost_in_flight(self, ending: str) -> None:
        reason = (
            f"association {ending.replace('_', ' ')} mid-transfer: the instance being sent was not received "
            "whole, was not stored or acknowledged; the sender must send it again"
        )
        self.metrics.instances.labels("incomplete").inc()
        logger.warning("instance lost mid-transfer", extra={"ending": ending})
        self.publisher.dead_letter(
            DeadLetterEventV1(
                stage="producer", reason=reason, error_type="IncompleteTransfer", sha256=None, source=SOURCE
            )
        )

    def publish_due(self) -> int:
        """Publish every complete study; forget published ones after a day (a later image starts anew)."""
        published = publish_complete(self.buffer, self.publisher, quiet_s=self.quiet_s, source=SOURCE)
        self.metrics.studies_published.inc(len(published))
        self.metrics.pending.set(self.buffer.pending())
        self.buffer.forget_before(utcnow() - REMEMBER_PUBLISHED)
        return len(published)
