"""The demo's DICOM studies are what the gateway takes: a PA and a lateral, then a repeat PA, one study each."""

from __future__ import annotations

from pathlib import Path

from pydantic import SecretStr

from cxr_triage.imaging import decode_grayscale
from cxr_triage.ingest.pseudonym import Pseudonymiser
from cxr_triage.ingest.validate import prepare_bytes
from producers.sample_dicom import write_studies
from producers.sample_images import write_samples

PSEUDONYMS = Pseudonymiser(SecretStr("a-test-key-that-is-long-enough-for-hmac"))


def test_demo_studies_are_accepted_with_their_views_and_made_up_patients(tmp_path: Path) -> None:
    write_samples(tmp_path / "png", n=5)  # five images: two studies, the fifth left over
    assert len(write_studies(tmp_path / "png", tmp_path / "dicom", studies=3)) == 2
    for n in (1, 2):
        sent = [
            prepare_bytes(path.read_bytes(), PSEUDONYMS)
            for part in ("first", "late")
            for path in sorted((tmp_path / "dicom" / part / f"study-{n:02d}").iterdir())
        ]
        assert [image.view for image in sent] == ["PA", "LATERAL", "PA"]
        assert len({image.study_id for image in sent}) == 1 and len({image.image_id for image in sent}) == 3
        assert sent[0].pseudonyms.patient == PSEUDONYMS.token("patient_id", f"DEMO-{n:04d}")
        assert decode_grayscale(sent[2].data).shape == (320, 320)
