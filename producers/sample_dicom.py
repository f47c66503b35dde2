"""Demo DICOM studies from PNG / JPEG images: a PA, a lateral and a late repeat PA per study, with made-up
patient details, for showing the gateway and multi-image studies (``make demo`` sends them with dcmtk).

The lateral is the frontal image under a LATERAL header (the public sample set has frontal images only): it
shows how a lateral is stored and shown, not what a lateral looks like. The patient details are invented
(``DEMO^PATIENT 01``...), so the patient panel has something to show. ``python -m producers.sample_dicom
IMAGES OUT [--studies N]`` writes ``OUT/first/study-NN/`` (PA + lateral) and ``OUT/late/study-NN/`` (the
repeat PA, to send later: it joins its study on the worklist).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import click
import numpy as np
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from cxr_triage.ingest.dicom_header import DX_FOR_PRESENTATION
from cxr_triage.ingest.validate import images_in


def instance(pixels: np.ndarray, *, study_uid: str, view: str, patient: int, number: int) -> FileDataset:
    """One DX instance (8-bit MONOCHROME2, Explicit VR Little Endian) of study ``study_uid``."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(DX_FOR_PRESENTATION)
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("demo.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = DX_FOR_PRESENTATION
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = generate_uid()
    ds.InstanceNumber = number
    ds.Modality = "DX"
    ds.ViewPosition = view
    ds.BodyPartExamined = "CHEST"
    ds.PatientName = f"DEMO^PATIENT {patient:02d}"
    ds.PatientID = f"DEMO-{patient:04d}"
    ds.PatientBirthDate = f"19{40 + patient % 50:02d}0101"
    ds.AccessionNumber = f"DEMOACC{patient:04d}"
    ds.InstitutionName = "Demo Hospital"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(pixels, dtype=np.uint8).tobytes()
    return ds


def write_studies(images: Path, out: Path, *, studies: int) -> list[str]:
    """Write ``studies`` demo studies from the images under ``images``; returns their StudyInstanceUIDs."""
    sources = _image_pairs(images)
    uids = []
    for n in range(1, studies + 1):
        try:
            frontal, repeat = next(sources)
        except StopIteration:
            break
        uid = str(generate_uid())
        first, late = out / "first" / f"study-{n:02d}", out / "late" / f"study-{n:02d}"
        first.mkdir(parents=True, exist_ok=True)
        late.mkdir(parents=True, exist_ok=True)
        instance(frontal, study_uid=uid, view="PA", patient=n, number=1).save_as(
            first / "1.dcm", enforce_file_format=True
        )
        instance(frontal, study_uid=uid, view="LL", patient=n, number=2).save_as(
            first / "2.dcm", enforce_file_format=True
        )
        instance(repeat, study_uid=uid, view="PA", patient=n, number=3).save_as(
            late / "3.dcm", enforce_file_format=True
        )
        uids.append(uid)
    return uids


def _image_pairs(folder: Path) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    paths = [p for p in images_in(folder) if p.suffix.lower() in (".png", ".jpg", ".jpeg")]
    for a, b in zip(paths[0::2], paths[1::2], strict=False):
        yield _grey(a), _grey(b)


def _grey(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("L"), dtype=np.uint8)


@click.command()
@click.argument("images", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--studies", type=click.IntRange(min=1), default=3, show_default=True)
def main(images: Path, out: Path, studies: int) -> None:
    """Write demo DICOM studies made from the PNG / JPEG images under IMAGES into OUT."""
    written = write_studies(images, out, studies=studies)
    click.echo(f"wrote {len(written)} demo DICOM stud(y/ies) under {out}/first and {out}/late")


if __name__ == "__main__":
    main()
