"""How long a verdict takes to become a feedback row: measured and reported, never asserted.

``.venv/bin/pytest -q -s tests/integration/test_processors_latency.py`` prints the median and p95 over 50
verdicts (each produced once its study and prediction are joined, 0.2 s apart) and writes them to
``<tmp>/latency.json``.
"""

from __future__ import annotations

import json
import sqlite3
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from cxr_triage import topics
from tests.integration.processors_support import processor_stack, wait_for
from tests.processors_factories import prediction, study, verdict

pytestmark = pytest.mark.integration

VERDICTS = 50


def test_latency_from_verdict_to_feedback_row(tmp_path: Path) -> None:
    with processor_stack(tmp_path) as (_broker, processor, events):
        processor.start()
        for i in range(VERDICTS):
            events.send(topics.STUDIES, study(f"l-{i:03d}"))
            events.send(topics.PREDICTIONS, prediction(f"l-{i:03d}"))
        events.flush()
        produced: dict[str, float] = {}
        for i in range(VERDICTS):
            produced[f"l-{i:03d}"] = time.time()  # from the moment the API would publish it
            events.send(topics.VERDICTS, verdict(f"l-{i:03d}"))
            events.flush()
            time.sleep(0.2)
        store = processor.store
        wait_for(lambda: store.count() == VERDICTS, timeout_s=60, what="every verdict in the store")
        with sqlite3.connect(store.path) as db:
            stored = dict(db.execute("SELECT study_id, stored_at FROM examples").fetchall())
        latencies = [
            datetime.fromisoformat(stored[study_id]).timestamp() - at for study_id, at in produced.items()
        ]
        report = {
            "verdicts": VERDICTS,
            "median_s": round(float(np.median(latencies)), 3),
            "p95_s": round(float(np.percentile(latencies, 95)), 3),
            "max_s": round(max(latencies), 3),
        }
        (tmp_path / "latency.json").write_text(json.dumps(report))
        print(f"\nverdict -> feedback row: {report}")
        assert all(latency > 0 for latency in latencies)
