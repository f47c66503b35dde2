"""``python -m deploy.topics``: create the cxr topics on the configured broker (idempotent).

`cxr-triage up` does this itself; containers (compose.yaml) run it as a one-shot step.
"""

from __future__ import annotations

import logging
import sys

from cxr_triage import topics
from cxr_triage.settings import load_settings
from deploy.kafka_broker import KafkaSetupError, ensure_topics


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    settings = load_settings()
    try:
        ensure_topics(settings, timeout_s=60.0)
    except KafkaSetupError as exc:
        sys.exit(str(exc))
    sys.stdout.write(f"topics ready on {settings.kafka_bootstrap_servers}: {', '.join(topics.ALL)}\n")


if __name__ == "__main__":
    main()
