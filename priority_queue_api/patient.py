"""Who the patient is: read from the original DICOM in the image store, for a radiologist, on request.

Nothing past the ingest carries a patient identifier; the radiologist reading a study may still need the
name (to compare with priors, to phone a finding through). The API reads it from the instance the gateway
stored, only for the radiologist role, and the route audits every read (``view`` of resource ``patient``).
"""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis

from cxr_triage.image_store import ImageNotFound, ImageStore, ImageStoreError
from cxr_triage.imaging import ImageRejected, read_dicom
from cxr_triage.ingest.dicom_header import tag_text
from cxr_triage.worklist.keys import WorklistKeys
from priority_queue_api.errors import NotFound, StudyNotFound
from priority_queue_api.models import PatientDetails


async def patient_details(
    *, redis: Redis, keys: WorklistKeys, store: ImageStore, study_id: str
) -> PatientDetails:
    uri, content_type = await redis.hmget(keys.study(study_id), ["image_uri", "content_type"])
    if uri is None:
        raise StudyNotFound(study_id)
    uri = uri.decode() if isinstance(uri, bytes) else uri
    content_type = content_type.decode() if isinstance(content_type, bytes) else content_type
    if content_type != "application/dicom":
        raise NotFound(f"study {study_id!r} came as {content_type or 'an image'} and names no patient")
    try:
        ds = await asyncio.to_thread(lambda: read_dicom(store.get(uri), pixels=False))
    except (ImageNotFound, ImageStoreError, ImageRejected) as exc:
        raise NotFound(f"the original of study {study_id!r} cannot be read from the image store") from exc
    return PatientDetails(
        patient_name=tag_text(ds, "PatientName"),
        patient_id=tag_text(ds, "PatientID"),
        birth_date=tag_text(ds, "PatientBirthDate"),
        sex=tag_text(ds, "PatientSex"),
        accession_number=tag_text(ds, "AccessionNumber"),
        study_date=tag_text(ds, "StudyDate"),
    )
