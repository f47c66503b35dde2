"""The Ray cluster's token (Ray's token authentication) for the containerised stack (compose.yaml).

``python -m deploy.ray_auth`` writes ``$CXR_HOME/ray-auth/token`` once (idempotent, like the Redis password).
The Ray head (its own image) reads it through the shared group, and every Ray process of ours finds it by
``RAY_AUTH_TOKEN_PATH``. The local stack needs none: its Ray cluster is private to the training run.
"""

from __future__ import annotations

import logging
import secrets
import sys
from pathlib import Path

from cxr_triage.fileio import create_once
from cxr_triage.settings import Settings, load_settings

logger = logging.getLogger(__name__)

# Group-readable: the Ray head's container joins the group of our image's user (gid 10001) to read it.
DIR_MODE = 0o750
TOKEN_MODE = 0o640


def token_file(settings: Settings) -> Path:
    return settings.home / "ray-auth" / "token"


def ensure_token(settings: Settings) -> Path:
    """The token file, generated on first use (256 random bits, hex, as Ray's own generator makes them)."""
    path = token_file(settings)
    path.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    path.parent.chmod(DIR_MODE)
    if create_once(path, secrets.token_hex(32).encode(), mode=TOKEN_MODE):
        logger.info("generated the Ray cluster token", extra={"file": str(path)})
    return path


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    path = ensure_token(load_settings())
    sys.stdout.write(f"Ray token ready in {path}\n")


if __name__ == "__main__":
    main()
