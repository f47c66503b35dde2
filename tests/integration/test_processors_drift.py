"""Drift on the real processor: public sample images against themselves stay quiet; inverted images alert."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from cxr_triage import topics
from cxr_triage.events import DriftReportV1
from cxr_triage.image_store import LocalImageStore
from cxr_triage.settings import Settings
from tests.integration.processors_support import Events, processor_stack, wait_for
from tests.processors_factories import prediction, study

pytestmark = pytest.mark.integration

DATASET = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "cxr-public" / "images"
REFERENCE = 100
WINDOW = 100


def _png(path: Path, *, invert: bool, side: int = 256) -> bytes:
    """A public image, shrunk (the test's pace, not the monitor's), optionally inverted; PNG bytes."""
    with Image.open(path) as img:
        gray = ImageOps.grayscale(img).resize((side, side))
    if invert:
        gray = ImageOps.invert(gray)
    buf = io.BytesIO()
    gray.save(buf, format="PNG")
    return buf.getvalue()


def _publish(events: Events, images: LocalImageStore, paths: list[Path], *, invert: bool, tag: str) -> None:
    # Priorities from one fixed distribution: only the inputs change between the windows.
    priorities = np.random.default_rng(7).uniform(0.05, 0.95, len(paths))
    for i, (path, priority) in enumerate(zip(paths, priorities, strict=True)):
        data = _png(path, invert=invert)
        uri = images.put(data, suffix=".png")
        study_id = f"{tag}-{i:04d}"
        events.send(topics.STUDIES, study(study_id, image_uri=uri, data=data))
        events.send(topics.PREDICTIONS, prediction(study_id, priority=float(priority)))
    events.flush()


def test_inverted_images_after_normal_ones_raise_a_drift_alert(tmp_path: Path) -> None:
    paths = sorted(DATASET.glob("*"))[: REFERENCE + 2 * WINDOW]
    assert len(paths) == REFERENCE + 2 * WINDOW, f"the public sample set is missing under {DATASET}"
    with processor_stack(tmp_path, drift_reference_size=str(REFERENCE), drift_window_size=str(WINDOW)) as (
        broker,
        processor,
        events,
    ):
        images = LocalImageStore(Settings(home=processor.home).image_store_dir)
        processor.start()
        _publish(events, images, paths[:REFERENCE], invert=False, tag="ref")
        _publish(events, images, paths[REFERENCE : REFERENCE + WINDOW], invert=False, tag="normal")
        # The first report comes once the window is full, i.e. over exactly the normal images.
        [first] = [
            DriftReportV1.model_validate(r)
            for r in broker.read(topics.DRIFT, lambda found: len(found) >= 1, timeout_s=120)[:1]
        ]
        assert (first.reference_size, first.window_size, first.model_version) == (REFERENCE, WINDOW, "1")
        assert not first.alert, f"public images against public images flagged: {first.scores}"

        _publish(events, images, paths[REFERENCE + WINDOW :], invert=True, tag="inverted")
        alerts = broker.read(topics.DRIFT, lambda found: any(r["alert"] for r in found), timeout_s=120)
        alert = next(DriftReportV1.model_validate(r) for r in alerts if r["alert"])
        flagged = {s.feature for s in alert.scores if s.flagged}
        assert "intensity" in flagged
        wait_for(
            lambda: processor.metric("cxr_drift_alert", model_version="1") == 1,
            timeout_s=30,
            what="the alert gauge",
        )
        # The first alert may come from a window still half normal (flagged by KS); once the window holds only
        # inverted images, the intensity PSI itself is past its 0.25 limit.
        wait_for(
            lambda: processor.metric("cxr_drift_psi", model_version="1", feature="intensity") > 0.25,
            timeout_s=60,
            what="the intensity PSI of the all-inverted window",
        )
        drift = processor.stats()["drift"]
        assert drift["model_version"] == "1" and drift["scores"]
