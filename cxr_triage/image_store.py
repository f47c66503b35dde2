"""Where study images live between the producer and the worker: a content-addressed store behind a protocol.

Events carry an ``image_uri`` and the image's sha256, never the bytes. ``LocalImageStore`` keeps each image
once, under ``root/ab/cd/<sha256><suffix>``, so a replayed upload is a no-op and a path never carries a file
name (which may hold a patient's name). Another backend (S3, a PACS) only has to honour ``ImageStore``.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import TYPE_CHECKING, Final, Protocol
from urllib.parse import unquote, urlparse
from urllib.request import url2pathname

from cxr_triage.events import ContentType
from cxr_triage.fileio import atomic_write

if TYPE_CHECKING:
    from cxr_triage.settings import Settings

SUFFIX_BY_CONTENT_TYPE: Final[dict[ContentType, str]] = {
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "application/dicom": ".dcm",
}
_SUFFIX = re.compile(r"^(\.[a-z0-9]{1,8})?$")
_CANONICAL_NAME = re.compile(r"^[0-9a-f]{64}(\.[a-z0-9]{1,8})?$")


class ImageStoreError(Exception):
    """Base class of image store failures."""


class ImageNotFound(ImageStoreError, LookupError):
    """No image at this URI (never stored, or removed)."""


class ImageURIRefused(ImageStoreError, ValueError):
    """The URI is not one this store serves (wrong scheme, or a path outside its root)."""


class ImageStore(Protocol):
    def put(self, data: bytes, *, suffix: str) -> str:
        """Store ``data`` (idempotent) and return its URI."""
        ...

    def get(self, uri: str) -> bytes:
        """The bytes behind ``uri``; ``ImageNotFound`` or ``ImageURIRefused`` otherwise."""
        ...


class LocalImageStore:
    """Content-addressed files under ``root``; URIs are absolute ``file://`` URIs."""

    def __init__(self, root: Path) -> None:
        self.root = root.expanduser().resolve()

    def path_for(self, sha256: str, suffix: str = "") -> Path:
        return self.root / sha256[:2] / sha256[2:4] / f"{sha256}{suffix}"

    def put(self, data: bytes, *, suffix: str) -> str:
        if not _SUFFIX.match(suffix):
            raise ValueError(f"suffix must be empty or like '.png', got {suffix!r}")
        path = self.path_for(hashlib.sha256(data).hexdigest(), suffix)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, data)
        return path.as_uri()

    def get(self, uri: str) -> bytes:
        path = self._resolve(uri)
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise ImageNotFound(f"no image at {self._describe(path)}") from exc

    def _resolve(self, uri: str) -> Path:
        parsed = urlparse(uri)
        if parsed.scheme != "file" or parsed.netloc not in ("", "localhost"):
            raise ImageURIRefused("only file:// URIs on this host are served by the local image store")
        path = Path(url2pathname(unquote(parsed.path))).resolve()
        if not path.is_relative_to(self.root):
            raise ImageURIRefused("image URI points outside the image store")
        return path

    def _describe(self, path: Path) -> str:
        # The content hash identifies the image without echoing a path that could carry a name.
        return f"<store>/{path.name}" if _CANONICAL_NAME.match(path.name) else "<store>/<non-canonical name>"


def open_image_store(settings: Settings) -> ImageStore:
    return LocalImageStore(settings.image_store_dir)
