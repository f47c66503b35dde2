"""The processors' store-side work without Kafka: the trigger across a crash, the metrics tick's reads, the
drift windows across a replay."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np

from cxr_triage.events import StudyEventV1, StudyImageV1
from cxr_triage.feedback.store import FeedbackStore, StoredExample
from cxr_triage.image_store import LocalImageStore
from stream_processors.config import ProcessorSettings
from stream_processors.drift import input_sample
from stream_processors.metrics import ProcessorMetrics
from stream_processors.monitors import Monitors
from tests.factories import feedback_event, png_bytes
from tests.processors_factories import T0, prediction, study


class CountingStore(FeedbackStore):
    """Records every ``scored_by`` call: what a metrics tick reads."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.reads: list[tuple[str, int | None]] = []

    def scored_by(self, model_version: str, *, last: int | None = None) -> list[StoredExample]:
        self.reads.append((model_version, last))
        return super().scored_by(model_version, last=last)


def _monitors(home: Path, store: FeedbackStore | None = None, **settings: Any) -> Monitors:
    config = ProcessorSettings(home=home, **settings)
    return Monitors(
        config,
        store=store or FeedbackStore(config.feedback_db_path),
        metrics=ProcessorMetrics(),
        images=None,  # type: ignore[arg-type]  # no test here reads an image
    )


def test_a_request_recorded_but_unpublished_is_republished_once_with_its_id_after_a_crash(
    tmp_path: Path,
) -> None:
    before_crash = _monitors(tmp_path, retrain_min_labels=3)
    for i in range(3):
        before_crash.store_feedback(feedback_event(f"s{i}", abnormal=i % 2 == 0))
    decided = before_crash.check_trigger()
    assert decided is not None and decided.reason == "new_labels"
    # kill -9 here: recorded in the store, never published. A restart (fresh Monitors, same store) must
    # publish that same request, and only it, once.
    restarted = _monitors(tmp_path, retrain_min_labels=3)
    published = []
    for _ in range(3):  # the sink, the metrics tick and a drift alert each check the trigger
        request = restarted.check_trigger()
        if request is not None:
            published.append(request)
            restarted.mark_published(request)
    assert published == [decided]
    for i in range(3, 10):  # more labels while it is pending: still nothing new
        restarted.store_feedback(feedback_event(f"s{i}"))
    assert restarted.check_trigger() is None
    assert restarted.trigger_state().pending == decided and restarted.trigger_state().published


def test_a_metrics_tick_reads_only_versions_with_new_rows_and_a_sliding_window_of_rows(
    tmp_path: Path,
) -> None:
    settings = ProcessorSettings(home=tmp_path, metrics_window=10, metrics_interval_s=30.0)
    store = CountingStore(settings.feedback_db_path)
    monitors = _monitors(tmp_path, store, metrics_window=10, metrics_interval_s=30.0)
    for i in range(25):  # a retired version
        store.upsert(
            feedback_event(f"old{i}", model_version="1", abnormal=i % 2 == 0, priority=0.3 + i % 2 * 0.4)
        )
    for i in range(4):
        store.upsert(feedback_event(f"new{i}", model_version="2", abnormal=i % 2 == 0))
    monitors.observe_prediction(prediction("new0", version="2", scored_at=T0 + timedelta(days=1)))

    first = {(e.model_version, e.window): e.examples for e in monitors.online_metrics(now=0.0)}
    assert first == {
        ("1", "sliding"): 10,
        ("1", "since_promotion"): 25,
        ("2", "sliding"): 4,
        ("2", "since_promotion"): 4,
    }
    assert store.reads == [("1", 10), ("1", None), ("2", 10), ("2", None)]

    store.reads.clear()
    quiet = monitors.online_metrics(now=1.0)  # nothing new: nothing read, the serving version's events again
    assert store.reads == [] and {(e.model_version, e.window) for e in quiet} == {
        ("2", "sliding"),
        ("2", "since_promotion"),
    }

    store.upsert(feedback_event("new4", model_version="2"))
    busy = {(e.model_version, e.window): e.examples for e in monitors.online_metrics(now=2.0)}
    assert store.reads == [("2", 10)]  # since-promotion waits for the metrics interval
    assert busy == {("2", "sliding"): 5, ("2", "since_promotion"): 4}
    store.reads.clear()
    due = {(e.model_version, e.window): e.examples for e in monitors.online_metrics(now=31.0)}
    assert store.reads == [("2", None)] and due == {("2", "sliding"): 5, ("2", "since_promotion"): 5}
    assert (
        monitors.metrics.online_examples.labels(model_version="1", window="since_promotion")._value.get()
        == 25
    )


def test_a_replayed_study_adds_no_second_drift_sample_and_its_id_stays_out_of_the_report(
    tmp_path: Path,
) -> None:
    monitors = _monitors(tmp_path, drift_reference_size=10, drift_window_size=10)
    rng = np.random.default_rng(0)
    samples = [
        input_sample(rng.integers(0, 255, (32, 32), dtype=np.uint8), view="PA", source="s") for _ in range(3)
    ]
    for i, sample in enumerate(samples):
        monitors.add_drift_sample(sample, prediction(f"study-{i}"))
    monitors.add_drift_sample(samples[1], prediction("study-1"))  # replayed after a kill -9
    assert monitors._drift.reference_ids == ("study-0", "study-1", "study-2")
    assert len(monitors._drift.reference) == len(monitors._drift.reference_priorities) == 3


def test_a_drift_sample_takes_the_view_the_gateway_read_from_the_header(tmp_path: Path) -> None:
    images = LocalImageStore(tmp_path / "images")
    config = ProcessorSettings(home=tmp_path)
    monitors = Monitors(
        config, store=FeedbackStore(config.feedback_db_path), metrics=ProcessorMetrics(), images=images
    )

    def image(view: str, seed: int) -> StudyImageV1:
        data = png_bytes(seed=seed, size=64)
        return StudyImageV1(
            image_id=f"i-{view.lower()}",
            image_uri=images.put(data, suffix=".png"),
            sha256=hashlib.sha256(data).hexdigest(),
            content_type="image/png",
            size_bytes=len(data),
            view=view,  # type: ignore[arg-type]
        )

    # A lateral first: the drift sample is of the study's primary (first frontal) image, an AP.
    studied = StudyEventV1.of_images(
        [image("LATERAL", 3), image("AP", 4)], study_id="s-drift", received_at=T0, source="ward-3"
    )
    sample = monitors.summarise_input(studied)
    assert sample is not None and (sample.view, sample.source) == ("AP", "ward-3")
    data = png_bytes(seed=5, size=64)
    unstated = monitors.summarise_input(study("s-png", image_uri=images.put(data, suffix=".png"), data=data))
    assert unstated is not None and unstated.view == "UNKNOWN"
