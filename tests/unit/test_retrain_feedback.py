"""The feedback store as a training source: labels, uncertain findings, image paths and the held-out slice."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cxr_triage.events import FeedbackEventV1
from cxr_triage.feedback.store import FeedbackStore
from cxr_triage.image_store import LocalImageStore
from cxr_triage.labels import LABELS
from tests.factories import feedback_event, png_bytes
from trainer.data.feedback import FeedbackSource, held_out_manifest, is_held_out
from trainer.data.manifest import Verify, build_manifest
from trainer.data.policies import UncertaintyPolicy
from trainer.data.splits import Split, select
from trainer.errors import DataError


def _event(study_id: str, images: LocalImageStore, **changes: Any) -> FeedbackEventV1:
    data = png_bytes(seed=len(study_id) + sum(map(ord, study_id)), size=64)
    uri = images.put(data, suffix=".png")
    base = feedback_event(study_id, abnormal=changes.pop("abnormal", True)).model_dump()
    return FeedbackEventV1.model_validate({**base, "image_uri": uri, "sha256": Path(uri).stem, **changes})


def _source(store: FeedbackStore, images: LocalImageStore, **kwargs: Any) -> FeedbackSource:
    return FeedbackSource(
        store=store, image_root=images.root, heldout_fraction=kwargs.pop("fraction", 0.3), seed=7, **kwargs
    )


def test_labels_are_the_radiologists_and_uncertain_findings_are_minus_one(tmp_path: Path) -> None:
    images = LocalImageStore(tmp_path / "images")
    store = FeedbackStore(tmp_path / "fb.sqlite3")
    labels = dict.fromkeys(LABELS, 0) | {"Edema": 1, "Pleural Effusion": 1}
    store.upsert(_event("s1", images, labels=labels, uncertain=("Pleural Effusion", "Atelectasis")))
    store.upsert(_event("s2", images, abnormal=False))

    first, second = _source(store, images, fraction=0.01).examples()
    by_label = dict(zip(LABELS, first.labels, strict=True))
    assert (
        by_label["Edema"] == 1.0 and by_label["Pleural Effusion"] == -1.0 and by_label["Atelectasis"] == -1.0
    )
    assert by_label["No Finding"] == 0.0 and not any(math.isnan(v) for v in first.labels)
    assert (first.abnormal, second.abnormal) == (1.0, 0.0)
    assert first.patient_id == "s1" and first.source == "feedback" and first.frontal
    assert first.path.is_file() and first.path.is_relative_to(images.root)
    # Bad rows are named by sequence number and content hash, never by the study id.
    assert "s1" not in first.where and "s1" not in first.rel_path

    # The run's uncertainty policy decides about the uncertain findings, as for CheXpert's -1.
    manifest = build_manifest([_source(store, images, fraction=0.01)], verify=Verify.DECODE)
    targets, mask = manifest.targets(UncertaintyPolicy.IGNORE)
    effusion = LABELS.index("Pleural Effusion")
    assert mask[0, effusion] == 0.0 and mask[0, LABELS.index("Edema")] == 1.0
    targets, mask = manifest.targets(UncertaintyPolicy.ONES)
    assert targets[0, effusion] == 1.0 and mask[0, effusion] == 1.0


def test_held_out_slice_is_deterministic_disjoint_and_never_trained_on(tmp_path: Path) -> None:
    images = LocalImageStore(tmp_path / "images")
    store = FeedbackStore(tmp_path / "fb.sqlite3")
    for i in range(200):
        store.upsert(_event(f"study-{i:03d}", images, abnormal=i % 2 == 0))

    examples = _source(store, images).examples()
    held = held_out_manifest(examples)
    held_ids = {e.patient_id for e in held.examples}
    assert 40 <= len(held) <= 80  # about 30 % of 200
    # Deterministic: the same studies in a second read, in another process, and after more rows arrive.
    store.upsert(_event("study-late", images))
    assert {e.patient_id for e in held_out_manifest(_source(store, images).examples()).examples} - {
        "study-late"
    } == held_ids
    assert held_ids == {
        f"study-{i:03d}" for i in range(200) if is_held_out(f"study-{i:03d}", fraction=0.3, seed=7)
    }

    # Training (train + val, split by study) never sees a held-out study.
    manifest = build_manifest([_source(store, images)], verify=Verify.EXISTS)
    train = select(manifest, Split.TRAIN, val_fraction=0.2, seed=1)
    val = select(manifest, Split.VAL, val_fraction=0.2, seed=1)
    trained = {e.patient_id for e in train.examples} | {e.patient_id for e in val.examples}
    held_now = {e.patient_id for e in held_out_manifest(list(manifest.examples)).examples}
    assert trained.isdisjoint(held_now) and len(trained) + len(held_now) == 201
    # With a public set choosing the threshold, every training example is in "train".
    manifest = build_manifest([_source(store, images, training_split="train")], verify=Verify.EXISTS)
    assert len(select(manifest, Split.TRAIN, val_fraction=0.2, seed=1)) == 201 - len(held_now)
    with pytest.raises(DataError, match="val split is empty"):
        select(manifest, Split.VAL, val_fraction=0.2, seed=1)


def test_an_amended_study_stays_on_its_side(tmp_path: Path) -> None:
    images = LocalImageStore(tmp_path / "images")
    store = FeedbackStore(tmp_path / "fb.sqlite3")
    ids = [f"st-{i}" for i in range(60)]
    for sid in ids:
        store.upsert(_event(sid, images))
    before = {e.patient_id: e.split for e in _source(store, images).examples()}
    for sid in ids[:10]:
        amended = _event(sid, images, abnormal=False, kind="amendment", verdict_id=f"amend-{sid}")
        store.upsert(amended.model_copy(update={"decided_at": amended.decided_at.replace(year=2099)}))
    after = {e.patient_id: e.split for e in _source(store, images).examples()}
    assert after == before


def test_window_bounds_and_image_outside_the_store(tmp_path: Path) -> None:
    images = LocalImageStore(tmp_path / "images")
    store = FeedbackStore(tmp_path / "fb.sqlite3")
    for i in range(5):
        store.upsert(_event(f"w{i}", images))
    assert [e.patient_id for e in _source(store, images, after_seq=1, up_to_seq=3).examples()] == ["w1", "w2"]

    outside = tmp_path / "elsewhere.png"
    outside.write_bytes(png_bytes())
    store.upsert(_event("w9", images, image_uri=outside.as_uri()))
    with pytest.raises(DataError, match="outside the image store"):
        _source(store, images).examples()


def test_abnormal_column_matches_the_event(tmp_path: Path) -> None:
    images = LocalImageStore(tmp_path / "images")
    store = FeedbackStore(tmp_path / "fb.sqlite3")
    for i in range(6):
        store.upsert(_event(f"ab{i}", images, abnormal=i < 4))
    manifest = build_manifest([_source(store, images, fraction=0.01)], verify=Verify.NONE)
    assert np.array_equal(manifest.abnormal(), np.array([1, 1, 1, 1, 0, 0], dtype=np.float32))
