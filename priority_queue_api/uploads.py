"""``POST /studies``: a browser upload goes through the producer's own path (prepare, store, publish).

The API adds what only an open HTTP endpoint needs, before any decoding: a byte cap enforced while the body
streams in, and a pixel cap read from the image header (which also stops decompression bombs: a small file
that declares a huge image is refused before it is inflated).
"""

from __future__ import annotations

import asyncio
import io
import logging
import threading
import warnings
from pathlib import Path

from fastapi import Request
from PIL import Image

from cxr_triage.events import StudyEventV1
from cxr_triage.image_store import ImageStore
from cxr_triage.imaging import ImageRejected, read_dicom, sniff_content_type
from cxr_triage.ingest.pseudonym import pseudonymiser
from cxr_triage.ingest.publisher import DeliveryFailed, EventPublisher
from cxr_triage.ingest.service import publish_images, reject
from cxr_triage.ingest.validate import Rejection, prepare_bytes, sha256_of
from cxr_triage.settings import Settings
from priority_queue_api.config import ApiPolicy
from priority_queue_api.errors import EventsUnavailable, PayloadTooLarge, Unprocessable

log = logging.getLogger(__name__)


class UploadPublisher:
    """One producer for uploads; a lock makes each upload's flush report on that upload alone."""

    def __init__(self, settings: Settings, store: ImageStore, *, timeout_s: float) -> None:
        self._settings = settings
        self._publisher: EventPublisher | None = None  # made on the first upload: most APIs never get one
        self._store = store
        self._timeout_s = timeout_s
        self._pseudonyms = pseudonymiser(settings)
        self._lock = threading.Lock()

    def _get_publisher(self) -> EventPublisher:
        if self._publisher is None:
            self._publisher = EventPublisher(self._settings, client_id="cxr-api-upload")
        return self._publisher

    def publish(self, data: bytes, *, source: str) -> StudyEventV1:
        with self._lock:
            publisher = self._get_publisher()
            try:
                prepared = prepare_bytes(data, self._pseudonyms)
            except ImageRejected as exc:
                rejection = Rejection(Path("upload"), exc.reason, sha256_of(data) if data else None)
                reject(rejection=rejection, publisher=publisher, source=source)
                try:
                    publisher.flush(self._timeout_s)
                except DeliveryFailed:
                    log.error("dead letter for a rejected upload undelivered")
                raise Unprocessable(f"upload rejected: {exc.reason}") from exc
            (event,) = publish_images([prepared], store=self._store, publisher=publisher, source=source)
            try:
                publisher.flush(self._timeout_s)
            except DeliveryFailed as exc:
                raise EventsUnavailable(
                    f"Kafka did not confirm the study within {self._timeout_s:.0f} s; upload again later"
                ) from exc
            return event

    def close(self, timeout_s: float) -> None:
        if self._publisher is None:
            return
        try:
            self._publisher.flush(timeout_s)
        except DeliveryFailed:
            log.error("upload events left undelivered at shutdown")


async def read_capped(request: Request, max_bytes: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(f"upload is {declared} bytes, over the {max_bytes}-byte limit")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise PayloadTooLarge(f"upload is over the {max_bytes}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


def declared_dimensions(data: bytes) -> tuple[int, int]:
    """Width and height from the file's header, without decoding pixels; ``ImageRejected`` if unreadable."""
    kind = sniff_content_type(data)
    if kind == "application/dicom":
        ds = read_dicom(data, pixels=False)
        try:
            return int(ds.get("Columns", 0) or 0), int(ds.get("Rows", 0) or 0)
        except (TypeError, ValueError) as exc:
            raise ImageRejected(f"unreadable DICOM image size: {exc}") from exc
    try:
        with warnings.catch_warnings():
            # The header alone is read here; the pixel cap below is the bomb guard, not PIL's warning.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as probe:
                width, height = probe.size
                return int(width), int(height)
    except Image.DecompressionBombError:
        raise
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageRejected(f"corrupt or truncated image: {exc}") from exc


def check_upload(data: bytes, policy: ApiPolicy) -> None:
    if not data:
        raise Unprocessable("upload rejected: empty body (send the image bytes as the request body)")
    try:
        width, height = declared_dimensions(data)
    except Image.DecompressionBombError as exc:
        raise PayloadTooLarge(f"decompression bomb guard: {exc}") from exc
    except ImageRejected:
        return  # unreadable: the producer path rejects it with its reason and dead-letters it
    if width * height > policy.max_upload_pixels:
        raise PayloadTooLarge(
            f"image declares {width}x{height} pixels, over the {policy.max_upload_pixels}-pixel limit "
            "(decompression bomb guard)"
        )


async def upload_study(
    *, request: Request, policy: ApiPolicy, uploads: UploadPublisher, source: str
) -> StudyEventV1:
    data = await read_capped(request, policy.max_upload_bytes)
    check_upload(data, policy)
    return await asyncio.to_thread(uploads.publish, data, source=source)
