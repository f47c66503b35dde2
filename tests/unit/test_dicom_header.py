"""The DICOM header as ingest reads it: accepted SOP classes, view, body-part flag, pseudonymised identifiers."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from cxr_triage.events import StudyPseudonyms
from cxr_triage.imaging import ImageRejected
from cxr_triage.ingest.dicom_header import read_instance
from cxr_triage.ingest.pseudonym import Pseudonymiser
from cxr_triage.ingest.validate import prepare_bytes
from tests.dicom_files import (
    CR_IMAGE,
    CT_IMAGE,
    PLANTED,
    SECONDARY_CAPTURE,
    chest_pixels,
    radiograph,
    to_bytes,
)

PSEUDONYMS = Pseudonymiser(SecretStr("a-test-key-that-is-long-enough-for-hmac"))


@pytest.mark.parametrize(
    ("view", "expected"), [("PA", "PA"), ("AP", "AP"), ("LL", "LATERAL"), ("RL", "LATERAL"), ("", "UNKNOWN")]
)
def test_the_view_comes_from_view_position(view: str, expected: str) -> None:
    instance = read_instance(to_bytes(radiograph(chest_pixels(size=96), view=view)), PSEUDONYMS)
    assert instance.view == expected


def test_identifiers_are_pseudonymised_and_nothing_planted_survives() -> None:
    ds = radiograph(chest_pixels(size=96))
    instance = read_instance(to_bytes(ds), PSEUDONYMS)
    assert instance.study_id == PSEUDONYMS.uid(ds.StudyInstanceUID)
    assert instance.instance_id == PSEUDONYMS.uid(ds.SOPInstanceUID)
    assert instance.pseudonyms == StudyPseudonyms(
        accession=PSEUDONYMS.token("accession", PLANTED["AccessionNumber"]),
        patient=PSEUDONYMS.token("patient_id", PLANTED["PatientID"]),
        patient_name=PSEUDONYMS.token("patient_name", PLANTED["PatientName"]),
        birth_date=PSEUDONYMS.token("birth_date", PLANTED["PatientBirthDate"]),
        institution=PSEUDONYMS.token("institution", PLANTED["InstitutionName"]),
    )
    made = instance.pseudonyms.model_dump().values()
    assert all(made) and len({p.split("-")[0] for p in made}) == 5, "each kind has its own prefix"
    text = repr(instance)
    for value in (*PLANTED.values(), ds.StudyInstanceUID, ds.SOPInstanceUID, ds.SeriesInstanceUID):
        assert value not in text


def test_other_body_parts_are_flagged_not_refused() -> None:
    chest = read_instance(to_bytes(radiograph(chest_pixels(size=96), body_part="CHEST")), PSEUDONYMS)
    abdomen = read_instance(to_bytes(radiograph(chest_pixels(size=96), body_part="ABDOMEN")), PSEUDONYMS)
    assert chest.flags == () and abdomen.flags == ("body_part:ABDOMEN",)


def test_sop_classes_cr_dx_and_secondary_captures_of_radiographs_only() -> None:
    assert read_instance(to_bytes(radiograph(sop_class=CR_IMAGE, modality="CR")), PSEUDONYMS).modality == "CR"
    assert read_instance(to_bytes(radiograph(sop_class=SECONDARY_CAPTURE, modality="DX")), PSEUDONYMS)
    with pytest.raises(ImageRejected, match="CT Image Storage is not a chest radiograph") as ct:
        read_instance(to_bytes(radiograph(sop_class=CT_IMAGE, modality="CT")), PSEUDONYMS)
    assert ct.value.kind == "unsupported"
    with pytest.raises(ImageRejected, match="'OT' is not a radiograph") as other:
        read_instance(to_bytes(radiograph(sop_class=SECONDARY_CAPTURE, modality="OT")), PSEUDONYMS)
    assert other.value.kind == "mismatch"


def test_a_prepared_dicom_image_is_named_by_pseudonyms_and_a_png_by_its_hash() -> None:
    ds = radiograph(chest_pixels(size=96), view="LL")
    image = prepare_bytes(to_bytes(ds), PSEUDONYMS)
    assert (image.study_id, image.view) == (PSEUDONYMS.uid(ds.StudyInstanceUID), "LATERAL")
    assert not image.image("file:/x.dcm").frontal
