"""The trainer's data layer: CheXpert and NIH sources, uncertainty policies, splits, bad rows, preprocessing."""

from __future__ import annotations

import csv
import hashlib
import math
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxr_triage.events import StudyEventV1
from cxr_triage.image_store import LocalImageStore
from cxr_triage.imaging import decode_grayscale, normalise, preprocess
from cxr_triage.labels import LABELS
from inference_worker.batching import Prepared, prepare_one
from inference_worker.records import Record
from trainer.data.augment import AugmentConfig, augment_grayscale
from trainer.data.chexpert import CheXpertSource
from trainer.data.dataset import CXRDataset
from trainer.data.manifest import Verify, build_manifest
from trainer.data.nih import NIHSource, map_findings
from trainer.data.open import open_source
from trainer.data.policies import UncertaintyPolicy, apply_policy
from trainer.data.splits import Split, assign, select
from trainer.errors import BadRowsError, DataError

PUBLIC = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "cxr-public"
HEADER = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *LABELS]


def _image(path: Path, seed: int, size: int = 64) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)
    Image.fromarray(pixels, mode="L").save(path)


def _labels(**values: str) -> list[str]:
    return [values.get(label.replace(" ", "_"), "") for label in LABELS]


def _write_chexpert(root: Path, rows: list[list[str]], name: str = "labels.csv") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    with (root / name).open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(HEADER)
        writer.writerows(rows)
    return root


@pytest.fixture()
def chexpert(tmp_path: Path) -> Path:
    rows = []
    for i, values in enumerate(
        [
            {"No_Finding": "1"},
            {"No_Finding": "0", "Edema": "1", "Cardiomegaly": "-1", "Atelectasis": "0"},
            {"Pneumonia": "-1.0", "Lung_Opacity": "1.0"},
        ]
    ):
        _image(tmp_path / "data" / f"images/img{i}.png", i)
        rows.append([f"images/img{i}.png", "Female", "40", "Frontal", "PA", *_labels(**values)])
    return _write_chexpert(tmp_path / "data", rows)


def test_blank_is_unknown_and_each_policy_maps_uncertain(chexpert: Path) -> None:
    raw = build_manifest([CheXpertSource(chexpert)]).raw_labels()
    cardio, edema, pneumonia = LABELS.index("Cardiomegaly"), LABELS.index("Edema"), LABELS.index("Pneumonia")
    assert raw[1, cardio] == -1.0 and raw[1, edema] == 1.0 and math.isnan(raw[0, edema])

    targets, mask = apply_policy(raw, UncertaintyPolicy.IGNORE)
    assert mask[1, cardio] == 0 and mask[2, pneumonia] == 0 and mask[0, edema] == 0  # -1 and blank masked
    assert mask[1, edema] == 1 and targets[1, edema] == 1

    targets, mask = apply_policy(raw, UncertaintyPolicy.ONES)
    assert (mask[1, cardio], targets[1, cardio]) == (1, 1) and targets[2, pneumonia] == 1
    assert mask[0, edema] == 0  # blanks stay unknown under every policy

    targets, mask = apply_policy(raw, UncertaintyPolicy.ZEROS)
    assert (mask[1, cardio], targets[1, cardio]) == (1, 0) and targets[2, pneumonia] == 0


def test_abnormal_is_derived_from_labels_without_an_abnormal_column(chexpert: Path) -> None:
    abnormal = build_manifest([CheXpertSource(chexpert)]).abnormal()
    assert abnormal[0] == 0 and abnormal[1] == 1 and abnormal[2] == 1


def test_official_chexpert_layout_resolves_paths_patients_views_and_valid_split(tmp_path: Path) -> None:
    root = tmp_path / "CheXpert-v1.0-small"
    train_rows: list[list[str]] = []
    valid_rows: list[list[str]] = []
    for patient, view, rows in [
        ("patient00001", "frontal", train_rows),
        ("patient00001", "lateral", train_rows),
        ("patient00002", "frontal", train_rows),
        ("patient64541", "frontal", valid_rows),
    ]:
        rel = f"CheXpert-v1.0-small/{'valid' if rows is valid_rows else 'train'}/{patient}/study1/view1_{view}.jpg"
        _image(tmp_path / rel, len(train_rows) + len(valid_rows))
        rows.append(
            [rel, "Male", "50", view.capitalize(), "PA" if view == "frontal" else "", *_labels(Edema="1")]
        )
    _write_chexpert(root, train_rows, "train.csv")
    _write_chexpert(root, valid_rows, "valid.csv")

    manifest = build_manifest([open_source(root)])  # frontal only by default
    assert len(manifest) == 3
    assert {e.patient_id for e in manifest.examples} == {"patient00001", "patient00002", "patient64541"}
    splits = assign(manifest, val_fraction=0.5, seed=1)
    assert [s for s, e in zip(splits, manifest.examples, strict=True) if e.patient_id == "patient64541"] == [
        Split.VAL
    ]
    assert len(build_manifest([CheXpertSource(root)], frontal_only=False)) == 4


def test_nih_mapping_follows_the_documented_table() -> None:
    labels, abnormal = map_findings(frozenset({"No Finding"}))
    row = dict(zip(LABELS, labels, strict=True))
    assert abnormal == 0 and row["No Finding"] == 1 and row["Pneumothorax"] == 0 and row["Fracture"] == 0
    assert math.isnan(row["Support Devices"])

    row = dict(zip(LABELS, map_findings(frozenset({"Infiltration", "Mass"}))[0], strict=True))
    assert row["Lung Opacity"] == 1 and row["Lung Lesion"] == 1 and row["No Finding"] == 0
    assert row["Atelectasis"] == 0 and math.isnan(row["Fracture"])

    row = dict(zip(LABELS, map_findings(frozenset({"Consolidation"}))[0], strict=True))
    assert row["Consolidation"] == 1 and math.isnan(
        row["Lung Opacity"]
    )  # opacity-like finding, no Infiltration

    labels, abnormal = map_findings(frozenset({"Emphysema"}))
    row = dict(zip(LABELS, labels, strict=True))
    assert abnormal == 1 and row["No Finding"] == 0 and row["Lung Opacity"] == 0
    row = dict(zip(LABELS, map_findings(frozenset({"Effusion", "Pleural_Thickening"}))[0], strict=True))
    assert row["Pleural Effusion"] == 1 and row["Pleural Other"] == 1


def _write_nih(root: Path, entries: list[tuple[str, str, str]], *, test: tuple[str, ...] = ()) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    with (root / "Data_Entry_2017.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            [
                "Image Index",
                "Finding Labels",
                "Follow-up #",
                "Patient ID",
                "Patient Age",
                "Patient Gender",
                "View Position",
            ]
        )
        for name, findings, patient in entries:
            writer.writerow([name, findings, "0", patient, "50", "M", "PA"])
    if test:
        (root / "test_list.txt").write_text("\n".join(test) + "\n")
    return root


def test_nih_source_finds_archive_folders_and_official_test_list(tmp_path: Path) -> None:
    root = tmp_path / "nih"
    _image(root / "images_001" / "images" / "00000001_000.png", 1)
    _image(root / "images_002" / "images" / "00000002_000.png", 2)
    _write_nih(
        root,
        [("00000001_000.png", "No Finding", "1"), ("00000002_000.png", "Effusion|Infiltration", "2")],
        test=("00000002_000.png",),
    )
    source = open_source(root)
    assert isinstance(source, NIHSource)
    manifest = build_manifest([source])
    assert [e.patient_id for e in manifest.examples] == ["nih_00000001", "nih_00000002"]
    assert [e.split for e in manifest.examples] == ["train", "test"]
    assert manifest.abnormal().tolist() == [0.0, 1.0]


def test_nih_unknown_finding_names_the_row(tmp_path: Path) -> None:
    root = _write_nih(tmp_path / "nih", [("a.png", "No Finding", "1"), ("b.png", "Effusion|Dragon", "2")])
    with pytest.raises(
        BadRowsError, match=r"Data_Entry_2017.csv line 3 \(b.png\): unknown finding\(s\) \['Dragon'\]"
    ):
        NIHSource(root).examples()


def test_bad_rows_are_all_reported_before_training(tmp_path: Path) -> None:
    root = tmp_path / "bad"
    _image(root / "images/ok.png", 0)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "images/garbage.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    rows = [
        ["images/ok.png", "", "", "Frontal", "", *_labels(Edema="1")],
        ["images/missing.png", "", "", "Frontal", "", *_labels(Edema="0")],
        ["images/garbage.jpg", "", "", "Frontal", "", *_labels(Edema="1")],
    ]
    _write_chexpert(root, rows)
    with pytest.raises(BadRowsError) as caught:
        build_manifest([CheXpertSource(root)])
    message = str(caught.value)
    assert "2 bad row(s)" in message
    assert "labels.csv line 3 (images/missing.png): image file not found" in message
    assert "labels.csv line 4 (images/garbage.jpg): unreadable image" in message
    # existence checks alone do not open files
    with pytest.raises(BadRowsError, match="1 bad row"):
        build_manifest([CheXpertSource(root)], verify=Verify.EXISTS)


def test_unknown_label_value_names_row_and_column(tmp_path: Path) -> None:
    root = tmp_path / "labels"
    _image(root / "images/a.png", 0)
    _write_chexpert(root, [["images/a.png", "", "", "Frontal", "", *_labels(Edema="maybe")]])
    with pytest.raises(
        BadRowsError, match=r"labels.csv line 2 \(images/a.png\): column 'Edema' holds 'maybe'"
    ):
        CheXpertSource(root).examples()
    _write_chexpert(root, [["images/a.png", "", "", "Frontal", "", *_labels(Edema="2")]])
    with pytest.raises(BadRowsError, match="column 'Edema' holds '2'"):
        CheXpertSource(root).examples()


def test_missing_columns_and_empty_data_are_data_errors(tmp_path: Path) -> None:
    (tmp_path / "labels.csv").write_text("Path,Edema\nimages/a.png,1\n")
    with pytest.raises(DataError, match="lacks column"):
        CheXpertSource(tmp_path).examples()
    with pytest.raises(DataError, match=r"no labels\.csv"):
        CheXpertSource(tmp_path / "nothing").label_files()


def test_a_bad_file_found_mid_epoch_still_names_its_row(chexpert: Path) -> None:
    manifest = build_manifest([CheXpertSource(chexpert)])
    (chexpert / "images/img1.png").write_bytes(b"truncated")
    dataset = CXRDataset(manifest, size=64, policy=UncertaintyPolicy.IGNORE)
    with pytest.raises(BadRowsError, match=r"labels.csv line 3 \(images/img1.png\)"):
        dataset[1]


@pytest.mark.skipif(not PUBLIC.is_dir(), reason="public sample set not present")
def test_public_set_loads_and_splits_by_patient() -> None:
    manifest = build_manifest([open_source(PUBLIC)])
    assert len(manifest) == 534
    train = select(manifest, Split.TRAIN, val_fraction=0.2, seed=20240601)
    val = select(manifest, Split.VAL, val_fraction=0.2, seed=20240601)
    assert len(train) + len(val) == 534
    assert {e.patient_id for e in train.examples}.isdisjoint({e.patient_id for e in val.examples})
    assert 0.12 < len(val) / 534 < 0.28
    assert set(val.sources()) == {"NIH-ChestXray14", "MHH-COVID19-image-repository"}
    again = select(
        build_manifest([open_source(PUBLIC)], verify=Verify.NONE), Split.VAL, val_fraction=0.2, seed=20240601
    )
    assert [e.rel_path for e in again.examples] == [e.rel_path for e in val.examples]


@pytest.mark.skipif(not PUBLIC.is_dir(), reason="public sample set not present")
def test_trainer_and_worker_preprocessing_give_identical_tensors(tmp_path: Path) -> None:
    manifest = build_manifest([open_source(PUBLIC)], verify=Verify.NONE).subset(range(5))
    dataset = CXRDataset(manifest, size=96, policy=UncertaintyPolicy.IGNORE)  # evaluation: no augmentation
    store = LocalImageStore(tmp_path / "store")
    for index, example in enumerate(manifest.examples):
        data = example.path.read_bytes()
        event = StudyEventV1(
            study_id=f"s{index}",
            image_uri=store.put(data, suffix=".jpg"),
            sha256=hashlib.sha256(data).hexdigest(),
            content_type="image/jpeg",
            size_bytes=len(data),
            received_at=datetime.now(UTC),
        )
        record = Record(
            topic="t", partition=0, offset=index, key=event.study_id.encode(), value=event.to_bytes()
        )
        prepared = prepare_one(record, store=store, input_size=96)
        assert isinstance(prepared, Prepared)
        image, _, _ = dataset[index]
        # The worker sends the served graph the pixels; the trainer feeds its network the graph's normalisation.
        assert np.array_equal(dataset.pixels(index), prepared.tensor)
        assert np.array_equal(image.numpy(), normalise(prepared.tensor))


def test_augmentation_is_seeded_per_epoch_and_keeps_shape(chexpert: Path) -> None:
    manifest = build_manifest([CheXpertSource(chexpert)])
    augmented = CXRDataset(
        manifest, size=64, policy=UncertaintyPolicy.IGNORE, augment=AugmentConfig(), seed=3
    )
    first = augmented[0][0]
    assert np.array_equal(first.numpy(), augmented[0][0].numpy())  # same (seed, epoch, index): same image
    augmented.set_epoch(1)
    assert not np.array_equal(first.numpy(), augmented[0][0].numpy())
    plain = CXRDataset(manifest, size=64, policy=UncertaintyPolicy.IGNORE)
    expected = preprocess(decode_grayscale(manifest.examples[0].path.read_bytes()), 64)
    assert np.array_equal(plain[0][0].numpy(), expected)
    gray = np.full((80, 80), 128, dtype=np.uint8)
    out = augment_grayscale(gray, np.random.default_rng(0), AugmentConfig())
    assert out.shape == gray.shape and out.dtype == np.uint8
