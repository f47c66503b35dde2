"""The study's image and its activation-map overlay as PNG (decoding runs in a worker thread)."""

from __future__ import annotations

import asyncio
import logging

import numpy as np
from redis.asyncio import Redis

from cxr_triage.image_store import ImageNotFound, ImageStore, ImageStoreError
from cxr_triage.imaging import ImageRejected, decode_grayscale
from cxr_triage.labels import LABELS
from cxr_triage.worklist.keys import WorklistKeys
from priority_queue_api.errors import NotFound, StudyNotFound, Unprocessable
from priority_queue_api.rendering import CamMalformed, decode_cam, fit, overlay, png_bytes

log = logging.getLogger(__name__)


def _str(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


async def _study_fields(redis: Redis, keys: WorklistKeys, study_id: str, *names: str) -> list[str | None]:
    values = [_str(v) for v in await redis.hmget(keys.study(study_id), ["study_id", *names])]
    if values[0] is None:
        raise StudyNotFound(study_id)
    return values[1:]


async def _gray(store: ImageStore, uri: str | None, study_id: str) -> np.ndarray:
    if not uri:
        raise NotFound(f"study {study_id!r} has no image reference")
    try:
        return await asyncio.to_thread(lambda: decode_grayscale(store.get(uri)))
    except ImageNotFound as exc:
        raise NotFound(f"the image of study {study_id!r} is no longer in the image store") from exc
    except ImageStoreError as exc:
        log.error("image store refused a study's image URI", extra={"error": str(exc)})
        raise NotFound(f"the image of study {study_id!r} is not served by this API's image store") from exc
    except ImageRejected as exc:
        raise Unprocessable(
            f"the stored image of study {study_id!r} cannot be decoded: {exc.reason}"
        ) from exc


async def image_png(
    *, redis: Redis, keys: WorklistKeys, store: ImageStore, study_id: str, max_side: int
) -> bytes:
    (uri,) = await _study_fields(redis, keys, study_id, "image_uri")
    gray = await _gray(store, uri, study_id)
    return await asyncio.to_thread(lambda: png_bytes(fit(gray, max_side)))


async def heatmap_png(
    *,
    redis: Redis,
    redis_bytes: Redis,
    keys: WorklistKeys,
    store: ImageStore,
    study_id: str,
    finding: str,
    max_side: int,
) -> bytes:
    uri, cam_h, cam_w = await _study_fields(redis, keys, study_id, "image_uri", "cam_h", "cam_w")
    blob = await redis_bytes.get(keys.cam(study_id))
    if not isinstance(blob, bytes) or not cam_h or not cam_w:
        raise NotFound(
            f"no activation maps are stored for study {study_id!r} (the model that scored it has none)"
        )
    try:
        cam = decode_cam(blob, height=int(cam_h), width=int(cam_w), index=LABELS.index(finding))
    except (CamMalformed, ValueError) as exc:
        log.error("stored activation maps are malformed", extra={"error": str(exc)})
        raise NotFound(f"the activation maps stored for study {study_id!r} are unusable: {exc}") from exc
    gray = await _gray(store, uri, study_id)
    return await asyncio.to_thread(lambda: png_bytes(overlay(fit(gray, max_side), cam)))
