"""Run the DICOM gateway: a pynetdicom C-STORE / C-ECHO server and the thread that publishes complete studies."""

from __future__ import annotations

import logging
import warnings
from typing import Any

from prometheus_client import start_http_server
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, _config, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from cxr_triage.image_store import open_image_store
from cxr_triage.ingest.pseudonym import pseudonymiser
from cxr_triage.ingest.publisher import EventPublisher
from cxr_triage.settings import Settings
from producers.dicom_gateway import DicomGateway, GatewayMetrics
from producers.stopping import stop_on_signals
from producers.study_buffer import StudyBuffer

logger = logging.getLogger(__name__)

PUBLISH_EVERY_S = 0.5


def _quiet_dicom_libraries() -> None:
    # pydicom's warnings quote element values (a malformed birth date, a name) and pynetdicom's INFO lines
    # describe every association: neither belongs in a log that must hold no patient identifier.
    warnings.filterwarnings("ignore", module=r"pydicom(\..*)?")
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)


def application_entity(settings: Settings) -> AE:
    ae = AE(ae_title=settings.dicom_ae_title)
    # Every storage SOP class is negotiated, so that a CT or MR instance gets a C-STORE status with a reason
    # rather than a bare rejection of its presentation context; compressed transfer syntaxes too.
    for context in AllStoragePresentationContexts:
        if context.abstract_syntax is not None:
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    ae.add_supported_context(Verification)
    ae.network_timeout = settings.dicom_network_timeout_s
    ae.maximum_associations = settings.dicom_max_associations
    ae.require_called_aet = True  # a sender must address this gateway by its AE title
    return ae


def run_gateway(settings: Settings) -> int:
    _quiet_dicom_libraries()
    _config.STORE_RECV_CHUNKED_DATASET = True  # instances stream to a temporary file, not into memory
    metrics = GatewayMetrics()
    start_http_server(settings.gateway_metrics_port, addr=settings.bind_host, registry=metrics.registry)
    stop = stop_on_signals()
    buffer = StudyBuffer(settings.home / "gateway" / "pending.sqlite3")
    with EventPublisher(settings, client_id="cxr-dicom-gateway") as publisher:
        gateway = DicomGateway(
            store=open_image_store(settings),
            publisher=publisher,
            buffer=buffer,
            pseudonyms=pseudonymiser(settings),
            metrics=metrics,
            quiet_s=settings.dicom_quiet_s,
        )
        handlers: list[Any] = [
            (evt.EVT_C_ECHO, gateway.handle_echo),
            (evt.EVT_C_STORE, gateway.handle_store),
            (evt.EVT_RELEASED, lambda event: gateway.association_ended(event, "released")),
            (evt.EVT_ABORTED, lambda event: gateway.association_ended(event, "aborted")),
        ]
        server = application_entity(settings).start_server(
            (settings.bind_host, settings.dicom_port), block=False, evt_handlers=handlers
        )
        assert server is not None  # block=False returns the running server
        logger.info(
            "DICOM gateway listening",
            extra={
                "host": settings.bind_host,
                "port": settings.dicom_port,
                "ae_title": settings.dicom_ae_title,
            },
        )
        try:
            while not stop.wait(PUBLISH_EVERY_S):
                gateway.publish_due()
        finally:
            server.shutdown()
            gateway.publish_due()  # what the last associations completed
            buffer.close_db()
    return 0
