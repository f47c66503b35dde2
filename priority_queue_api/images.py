"""A study's images and their activation-map overlays as PNG (decoding runs in a worker thread).

Without an image id, the study's own image: the one its values are of (its most urgent image), with the
study's maps; with one, that image of the study with its own maps.

Renderings of an image (the greyscale PNG, at a size or at full resolution, and an activation map as a layer)
are cached on disk under ``<home>/derived/`` (``DerivedCache``), keyed by the original's content hash and the
rendering's parameters, so a second request decodes nothing. The browser still gets ``no-store``: the cache
is the server's.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image
from redis.asyncio import Redis

from cxr_triage.fileio import atomic_write
from cxr_triage.image_store import ImageNotFound, ImageStore, ImageStoreError
from cxr_triage.imaging import ImageRejected, decode_grayscale
from cxr_triage.labels import LABELS
from cxr_triage.worklist.keys import WorklistKeys
from priority_queue_api.errors import NotFound, StudyNotFound, Unprocessable
from priority_queue_api.rendering import CamMalformed, cam_layer, decode_cam, fit, overlay, png_bytes

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


# Part of every cache key: raise it when a rendering changes, so no file of the old one is served again.
RENDERING_VERSION = "1"

CacheOutcome = Literal["hit", "miss"]


@dataclass(frozen=True)
class Trimmed:
    kept_bytes: int
    kept_files: int
    removed_files: int


class DerivedCache:
    """Rendered PNGs under ``root`` (``<home>/derived``), each named by the SHA-256 of its key: the original's
    content hash and the rendering's parameters. A path names no study and no patient; the same original
    under two studies shares its files. Files are written atomically; a cache that cannot be written (disk
    full, permissions) is logged and the rendering served all the same. A hit refreshes the file's mtime, so
    ``trim`` drops the least recently used renderings first; any file may be deleted at any time."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path_for(self, *key: str) -> Path:
        name = hashlib.sha256("\0".join((RENDERING_VERSION, *key)).encode()).hexdigest()
        return self.root / name[:2] / f"{name}.png"

    def read(self, path: Path) -> bytes | None:
        try:
            data = path.read_bytes()
            os.utime(path)
        except FileNotFoundError:  # never rendered, or trimmed a moment ago
            return None
        except OSError as exc:
            log.warning("derived image cache unreadable", extra={"error": type(exc).__name__})
            return None
        return data

    def write(self, path: Path, data: bytes) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, data)
        except OSError as exc:
            log.warning("derived image cache not written", extra={"error": type(exc).__name__})

    def trim(self, max_bytes: int) -> Trimmed:
        """Delete the least recently used renderings until at most ``max_bytes`` remain; once over, down to
        90 % of it, so a busy reading room does not trim on every pass."""
        files: list[tuple[float, int, Path]] = []
        for path in self.root.glob("??/*.png"):
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            files.append((stat.st_mtime, stat.st_size, path))
        total = sum(size for _, size, _ in files)
        removed = 0
        if total > max_bytes:
            target = int(max_bytes * 0.9)
            for _, size, path in sorted(files, key=lambda f: f[0]):
                if total <= target:
                    break
                path.unlink(missing_ok=True)
                total -= size
                removed += 1
        return Trimmed(kept_bytes=total, kept_files=len(files) - removed, removed_files=removed)


@dataclass(frozen=True)
class Rendered:
    png: bytes
    cache: CacheOutcome


async def _original(store: ImageStore, uri: str | None, study_id: str) -> bytes:
    if not uri:
        raise NotFound(f"study {study_id!r} has no image reference")
    try:
        return await asyncio.to_thread(store.get, uri)
    except ImageNotFound as exc:
        raise NotFound(f"the image of study {study_id!r} is no longer in the image store") from exc
    except ImageStoreError as exc:
        log.error("image store refused a study's image URI", extra={"error": str(exc)})
        raise NotFound(f"the image of study {study_id!r} is not served by this API's image store") from exc


async def _decoded(data: bytes, study_id: str) -> np.ndarray:
    try:
        return await asyncio.to_thread(decode_grayscale, data)
    except ImageRejected as exc:
        raise Unprocessable(
            f"the stored image of study {study_id!r} cannot be decoded: {exc.reason}"
        ) from exc


async def _gray(store: ImageStore, uri: str | None, study_id: str) -> np.ndarray:
    return await _decoded(await _original(store, uri, study_id), study_id)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def _rendered_gray(
    cache: DerivedCache, data: bytes, study_id: str, max_side: int | None
) -> tuple[Rendered, str]:
    """The original as greyscale PNG (``max_side`` None: its full stored size; never upscaled), from the cache
    when it was rendered before; and the original's content hash."""
    digest = await asyncio.to_thread(_sha256, data)
    path = cache.path_for("gray", digest, "full" if max_side is None else str(max_side))
    cached = await asyncio.to_thread(cache.read, path)
    if cached is not None:
        return Rendered(cached, "hit"), digest
    gray = await _decoded(data, study_id)
    size = max(gray.shape) if max_side is None else max_side
    png = await asyncio.to_thread(lambda: png_bytes(fit(gray, size)))
    await asyncio.to_thread(cache.write, path, png)
    return Rendered(png, "miss"), digest


async def image_png(
    *,
    redis: Redis,
    keys: WorklistKeys,
    store: ImageStore,
    cache: DerivedCache,
    study_id: str,
    max_side: int | None,
    image_id: str | None = None,
) -> Rendered:
    """The image as greyscale PNG, at most ``max_side`` on its longest side, or (None) at full resolution."""
    shown = await _which(redis, keys, study_id, image_id)
    data = await _original(store, shown.uri, study_id)
    rendered, _ = await _rendered_gray(cache, data, study_id, max_side)
    return rendered


async def _cam(
    redis_bytes: Redis, shown: _Shown, study_id: str, image_id: str | None, finding: str
) -> tuple[np.ndarray, bytes]:
    """One finding's stored map of the shown image, and the blob it came from."""
    blob = await redis_bytes.get(shown.cam_key)
    if not isinstance(blob, bytes) or not shown.cam_h or not shown.cam_w:
        what = f"image {image_id!r} of study {study_id!r}" if image_id else f"study {study_id!r}"
        raise NotFound(f"no activation maps are stored for {what} (the model did not read it, or has none)")
    try:
        cam = decode_cam(blob, height=int(shown.cam_h), width=int(shown.cam_w), index=LABELS.index(finding))
    except (CamMalformed, ValueError) as exc:
        log.error("stored activation maps are malformed", extra={"error": str(exc)})
        raise NotFound(f"the activation maps stored for study {study_id!r} are unusable: {exc}") from exc
    return cam, blob


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
    cam, _ = await _cam(redis_bytes, shown, study_id, image_id, finding)
    gray = await _gray(store, shown.uri, study_id)
    return await asyncio.to_thread(lambda: png_bytes(overlay(fit(gray, max_side), cam)))


def _png_size(png: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(png)) as image:  # reads the header only
        return image.size


async def cam_png(
    *,
    redis: Redis,
    redis_bytes: Redis,
    keys: WorklistKeys,
    store: ImageStore,
    cache: DerivedCache,
    study_id: str,
    finding: str,
    image_id: str | None = None,
) -> Rendered:
    """The class-activation map for ``finding`` alone, as an RGBA layer at the image's full stored size."""
    shown = await _which(redis, keys, study_id, image_id)
    cam, blob = await _cam(redis_bytes, shown, study_id, image_id, finding)
    data = await _original(store, shown.uri, study_id)
    # The full rendering gives the size (and is what the page shows beneath the layer, so it is warm anyway).
    full, digest = await _rendered_gray(cache, data, study_id, None)
    path = cache.path_for(
        "cam", digest, await asyncio.to_thread(_sha256, blob), shown.cam_h or "", shown.cam_w or "", finding
    )
    cached = await asyncio.to_thread(cache.read, path)
    if cached is not None:
        return Rendered(cached, "hit")
    size = _png_size(full.png)
    png = await asyncio.to_thread(lambda: png_bytes(cam_layer(cam, size)))
    await asyncio.to_thread(cache.write, path, png)
    return Rendered(png, "miss")
