"""The worker reads a study image by image: each image of a view the model reads, once per study event, the
study as urgent as its most urgent image; a lateral is listed unread unless the model reads laterals."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from cxr_triage import topics
from cxr_triage.events import PredictionEventV1, StudyEventV1, StudyImageV1
from cxr_triage.labels import LABELS, NUM_LABELS
from cxr_triage.model.contract import ModelContract
from inference_worker.batching import IMAGE_UNAVAILABLE
from tests.unit.worker_rig import RECEIVED, SIZE, Rig, png, raw_message


@pytest.fixture()
def rig(tmp_path: Path) -> Rig:
    return Rig(tmp_path)


def _image(rig: Rig, seed: int, view: str, *, stored: bool = True) -> StudyImageV1:
    data = png(seed)
    uri = rig.store.put(data, suffix=".png") if stored else "file:///nowhere/gone.png"
    return StudyImageV1.model_validate(
        {
            "image_id": f"i-{seed}",
            "image_uri": uri,
            "sha256": hashlib.sha256(data).hexdigest(),
            "content_type": "image/png",
            "size_bytes": len(data),
            "view": view,
        }
    )


def _message(images: list[StudyImageV1], offset: int = 0, study_id: str = "S-1") -> object:
    study = StudyEventV1.of_images(images, study_id=study_id, received_at=RECEIVED, source="test")
    return raw_message(study.to_bytes(), offset, key=study_id.encode())


def _rows(rig: Rig, values: list[float]) -> None:
    """The model's answer for the batch's rows, in order: every finding of row i at values[i], "No Finding" at
    1 - values[i] (so a higher value is a more urgent image)."""
    rows = {}
    for i, v in enumerate(values):
        row = np.full(NUM_LABELS, v, dtype=np.float32)
        row[LABELS.index("No Finding")] = 1.0 - v
        rows[i] = row
    rig.scorer.rows = rows


def _predictions(rig: Rig) -> list[PredictionEventV1]:
    return [m.event for m in rig.publisher.of(topics.PREDICTIONS)]  # type: ignore[misc]


def test_each_frontal_image_is_read_and_the_study_is_its_most_urgent_one(rig: Rig) -> None:
    images = [_image(rig, 1, "PA"), _image(rig, 2, "LATERAL"), _image(rig, 3, "AP")]
    _rows(rig, [0.2, 0.7])  # PA, then AP: the lateral is not sent
    report = rig.worker([_message(images)]).step()  # type: ignore[list-item]
    assert report is not None and (report.consumed, report.scored) == (1, 1)
    assert rig.journal[0] == "triton:2" and rig.scorer.shapes == [(2, 1, SIZE, SIZE)]
    (prediction,) = _predictions(rig)
    assert prediction.image_id == "i-3" and prediction.priority == pytest.approx(
        max(i.priority or 0 for i in prediction.images)
    )
    assert [(i.image_id, i.view, i.scored) for i in prediction.images] == [
        ("i-1", "PA", True),
        ("i-2", "LATERAL", False),
        ("i-3", "AP", True),
    ]
    assert (prediction.images[0].probabilities or {})["Edema"] == pytest.approx(0.2)
    (entry,) = rig.worklist.entries
    assert entry.prediction == prediction and len(rig.worklist.entries) == 1  # one study, one entry


def test_a_model_that_reads_laterals_reads_them_too(rig: Rig) -> None:
    rig.scorer.served = ModelContract(input_size=SIZE, version="1", views=frozenset({"PA", "AP", "LATERAL"}))
    images = [_image(rig, 1, "PA"), _image(rig, 2, "LATERAL")]
    _rows(rig, [0.2, 0.9])
    rig.worker([_message(images)]).step()  # type: ignore[list-item]
    (prediction,) = _predictions(rig)
    assert rig.journal[0] == "triton:2"
    assert prediction.image_id == "i-2" and all(i.scored for i in prediction.images)


def test_a_study_of_laterals_only_is_still_read_so_that_it_gets_a_priority(rig: Rig) -> None:
    rig.worker([_message([_image(rig, 1, "LATERAL"), _image(rig, 2, "LATERAL")])]).step()  # type: ignore[list-item]
    (prediction,) = _predictions(rig)
    assert rig.journal[0] == "triton:1" and prediction.image_id == "i-1"
    assert [i.scored for i in prediction.images] == [True, False]


def test_an_unreadable_image_is_dead_lettered_alone_and_the_study_read_on_the_others(rig: Rig) -> None:
    images = [_image(rig, 1, "PA", stored=False), _image(rig, 2, "PA")]
    rig.worker([_message(images)]).step()  # type: ignore[list-item]
    (prediction,) = _predictions(rig)
    assert prediction.image_id == "i-2" and [i.scored for i in prediction.images] == [False, True]
    (dead,) = rig.publisher.of(topics.DLQ)
    assert dead.event.error_type and dead.event.study_id == "S-1"  # type: ignore[union-attr]
    assert rig.metric("cxr_worker_studies_dead_lettered_total", reason=IMAGE_UNAVAILABLE) == 1


def test_two_events_of_one_study_in_a_batch_are_each_read_with_their_own_images(rig: Rig) -> None:
    first, late = _image(rig, 1, "PA"), _image(rig, 2, "PA")
    _rows(rig, [0.3, 0.3, 0.8])  # the first event's PA; the second event's PA again and its late PA
    rig.worker([_message([first], 0), _message([first, late], 1)]).step()  # type: ignore[list-item]
    assert rig.journal[0] == "triton:3"
    # The in-memory worklist keeps the first write (the Redis script's late-image rule is tested on Redis).
    assert [len(e.prediction.images) for e in rig.worklist.entries] == [1]
