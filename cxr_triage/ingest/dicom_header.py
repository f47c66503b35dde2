"""What ingest reads from a DICOM instance's header: its SOP class, view, body part and identifiers.

The identifiers are read only to be pseudonymised here (``study_pseudonyms``): the real values stay in the
instance, which stays in the image store.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from pydicom.uid import UID

from cxr_triage.events import StudyPseudonyms, View
from cxr_triage.imaging import ImageRejected, check_dicom_image, read_dicom
from cxr_triage.ingest.pseudonym import IdentifierKind, Pseudonymiser

CR_IMAGE: Final = "1.2.840.10008.5.1.4.1.1.1"
DX_FOR_PRESENTATION: Final = "1.2.840.10008.5.1.4.1.1.1.1"
DX_FOR_PROCESSING: Final = "1.2.840.10008.5.1.4.1.1.1.1.1"
SECONDARY_CAPTURE: Final = "1.2.840.10008.5.1.4.1.1.7"
# The storage SOP classes a chest radiograph arrives as; a secondary capture only of a CR or DX image.
ACCEPTED_SOP_CLASSES: Final[frozenset[str]] = frozenset(
    {CR_IMAGE, DX_FOR_PRESENTATION, DX_FOR_PROCESSING, SECONDARY_CAPTURE}
)
_LATERAL: Final = frozenset({"LL", "RL", "LATERAL", "LAT", "LLD", "RLD", "LAO", "RAO"})
_CHEST: Final = frozenset({"CHEST", "THORAX", "LUNG", "LUNGS"})
_CODE_TEXT = re.compile(r"[^A-Z0-9_ ]")


@dataclass(frozen=True)
class PseudonymisedInstance:
    """One accepted instance as the rest of the system may see it: pseudonyms, view and flags only."""

    study_id: str
    instance_id: str
    series_id: str | None
    pseudonyms: StudyPseudonyms
    sop_class: str
    modality: str
    view: View
    flags: tuple[str, ...]


def sop_class_name(uid: str) -> str:
    """``1.2.840.10008.5.1.4.1.1.2`` -> ``CT Image Storage``: the name the standard gives, else the UID."""
    name = UID(uid).name
    return name if name and name != uid else uid


def check_sop_class(uid: str) -> None:
    if uid not in ACCEPTED_SOP_CLASSES:
        raise ImageRejected(
            f"SOP class {sop_class_name(uid)} is not a chest radiograph (CR, DX or a secondary capture)",
            "unsupported",
        )


def view_of(ds) -> View:  # type: ignore[no-untyped-def]
    """The projection from ViewPosition (0018,5101); a secondary capture may carry it too."""
    value = str(ds.get("ViewPosition", "") or "").strip().upper()
    if value in ("PA", "AP"):
        return value  # type: ignore[return-value]
    if value in _LATERAL:
        return "LATERAL"
    return "UNKNOWN"


def _coded(value: object, limit: int = 16) -> str:
    """A code string tag as safe text for an event: upper case, letters, digits, spaces; never free text."""
    return _CODE_TEXT.sub("", str(value or "").upper())[:limit].strip()


def flags_of(ds) -> tuple[str, ...]:  # type: ignore[no-untyped-def]
    flags = []
    body_part = _coded(ds.get("BodyPartExamined", ""))
    if body_part and body_part not in _CHEST:
        flags.append(f"body_part:{body_part}")
    return tuple(flags)


def tag_text(ds, keyword: str) -> str | None:  # type: ignore[no-untyped-def]
    """A tag's value as stripped text; None when absent or empty."""
    value = str(ds.get(keyword, "") or "").strip()
    return value or None


# Each patient and study identifier the header may carry, and the kind its pseudonym is keyed under.
_IDENTIFIERS: Final[dict[str, tuple[str, IdentifierKind]]] = {
    "accession": ("AccessionNumber", "accession"),
    "patient": ("PatientID", "patient_id"),
    "patient_name": ("PatientName", "patient_name"),
    "birth_date": ("PatientBirthDate", "birth_date"),
    "institution": ("InstitutionName", "institution"),
}


def study_pseudonyms(ds, pseudonyms: Pseudonymiser) -> StudyPseudonyms:  # type: ignore[no-untyped-def]
    """The header's patient and study identifiers as keyed pseudonyms; an empty tag stays empty."""
    found = {field: tag_text(ds, keyword) for field, (keyword, _) in _IDENTIFIERS.items()}
    return StudyPseudonyms(
        **{
            field: pseudonyms.token(_IDENTIFIERS[field][1], value) if value else None
            for field, value in found.items()
        }
    )


def read_instance(data: bytes, pseudonyms: Pseudonymiser) -> PseudonymisedInstance:
    """Check one DICOM instance's header and return it pseudonymised, or raise ``ImageRejected``."""
    ds = read_dicom(data, pixels=False)
    sop_class = tag_text(ds, "SOPClassUID") or str(ds.file_meta.get("MediaStorageSOPClassUID", "") or "")
    check_sop_class(sop_class)
    check_dicom_image(ds)
    study_uid, instance_uid = tag_text(ds, "StudyInstanceUID"), tag_text(ds, "SOPInstanceUID")
    if study_uid is None or instance_uid is None:
        raise ImageRejected("DICOM has no StudyInstanceUID or SOPInstanceUID", "mismatch")
    series_uid = tag_text(ds, "SeriesInstanceUID")
    return PseudonymisedInstance(
        study_id=pseudonyms.uid(study_uid),
        instance_id=pseudonyms.uid(instance_uid),
        series_id=pseudonyms.uid(series_uid) if series_uid else None,
        pseudonyms=study_pseudonyms(ds, pseudonyms),
        sop_class=sop_class,
        modality=str(ds.get("Modality", "")),
        view=view_of(ds),
        flags=flags_of(ds),
    )
