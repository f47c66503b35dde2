"""Atomic file writes: readers see the old file or the whole new one, never a partial write."""

from __future__ import annotations

import os
import secrets
import tempfile
from pathlib import Path


def atomic_write(path: Path, data: bytes, *, mode: int | None = None) -> None:
    """Write ``data`` beside ``path``, fsync it, then rename it into place (``mode`` set before any byte)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-", suffix=".tmp")
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def create_once(path: Path, data: bytes, *, mode: int) -> bool:
    """Put ``data`` at ``path`` whole, unless it exists; True if this call created it.

    A private temporary file, then a hard link that fails if ``path`` exists: two concurrent callers never
    both win (a rename would replace the winner's secret), and no reader sees a partial file.
    """
    tmp = path.with_name(f".{path.name}-{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)
    return True
