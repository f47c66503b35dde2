"""A study's images and their activation-map overlays as PNG (decoding runs in a worker thread).

Without an image id, the study's own image: the one its values are of (its most urgent image), with the
study's maps; with one, that image of the study with its own maps.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass

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


@dataclass(frozen=True)
class _Shown:
    """Which image of a study is shown, and where its maps are."""

    uri: str | None
    cam_key: str
    cam_h: str | None
    cam_w: str | None


async def _which(redis: Redis, keys: WorklistKeys, study_id: str, image_id: str | None) -> _Shown:
    """``image_id`` of the study, or (None) the image the study's values are of, else its top-level one."""
    uri, primary, cam_h, cam_w = await _study_fields(
        redis, keys, study_id, "image_uri", "image_id", "cam_h", "cam_w"
    )
    if image_id is None:
        if primary is None:  # a study written before studies kept their images
            return _Shown(uri, keys.cam(study_id), cam_h, cam_w)
        image_id, study_maps = primary, True
    else:
        study_maps = False
    raw = _str(await redis.hget(keys.images(study_id), image_id))
    if raw is None:
        raise NotFound(f"study {study_id!r} has no image {image_id!r}")
    stored = json.loads(raw)
    if study_maps:  # the study's own maps key: its most urgent image's, as the worker wrote them
        return _Shown(stored.get("image_uri"), keys.cam(study_id), cam_h, cam_w)
    h, w = stored.get("cam_h"), stored.get("cam_w")
    return _Shown(
        stored.get("image_uri"),
        keys.image_cam(study_id, image_id),
        None if h is None else str(h),
        None if w is None else str(w),
    )


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
    *,
    redis: Redis,
    keys: WorklistKeys,
    store: ImageStore,
    study_id: str,
    max_side: int,
    image_id: str | None = None,
) -> bytes:
    shown = await _which(redis, keys, study_id, image_id)
    gray = await _gray(store, shown.uri, study_id)
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
    image_id: str | None = None,
) -> bytes:
    shown = await _which(redis, keys, study_id, image_id)
    blob = await redis_bytes.get(shown.cam_key)
    if not isinstance(blob, bytes) or not shown.cam_h or not shown.cam_w:
        what = f"image {image_id!r} of study {study_id!r}" if image_id else f"study {study_id!r}"
        raise NotFound(f"no activation maps are stored for {what} (the model did not read it, or has none)")
    try:
        cam = decode_cam(blob, height=int(shown.cam_h), width=int(shown.cam_w), index=LABELS.index(finding))
    except (CamMalformed, ValueError) as exc:
        log.error("stored activation maps are malformed", extra={"error": str(exc)})
        raise NotFound(f"the activation maps stored for study {study_id!r} are unusable: {exc}") from exc
    gray = await _gray(store, shown.uri, study_id)
    return await asyncio.to_thread(lambda: png_bytes(overlay(fit(gray, max_side), cam)))
