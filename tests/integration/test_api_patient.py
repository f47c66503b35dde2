"""``GET /studies/{id}/patient``: the real patient read from the stored original, radiologists only, audited."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from pydicom.uid import generate_uid

from cxr_triage import topics
from cxr_triage.image_store import LocalImageStore
from cxr_triage.worklist.keys import WorklistKeys
from priority_queue_api.app import create_app
from priority_queue_api.config import ApiPolicy
from tests.dicom_files import PLANTED, chest_pixels, radiograph, to_bytes
from tests.factories import png_bytes
from tests.integration.api_support import Api, api_settings, make_users, put_study
from tests.integration.conftest import RedisServer
from tests.integration.kafka_support import KafkaBroker

pytestmark = pytest.mark.integration


def test_a_radiologist_reads_the_patient_name_every_read_is_audited_and_others_are_refused(
    kafka: KafkaBroker, redis_server: RedisServer, tmp_path: Path
) -> None:
    keys = WorklistKeys(f"patient{uuid.uuid4().hex[:8]}")
    settings = api_settings(
        tmp_path, redis_server.port, keys.prefix, kafka_port=kafka.settings.kafka_address.port
    )
    store = LocalImageStore(settings.image_store_dir)
    dicom_uri = store.put(
        to_bytes(radiograph(chest_pixels(size=96), study_uid=generate_uid())), suffix=".dcm"
    )
    png_uri = store.put(png_bytes(3), suffix=".png")
    r = redis.Redis.from_url(redis_server.url, decode_responses=True)
    put_study(r, keys, "2.25.1234", 0.8, image_uri=dicom_uri, content_type="application/dicom")
    put_study(r, keys, "p" * 64, 0.4, image_uri=png_uri)
    suffix = f"-{uuid.uuid4().hex[:6]}"
    tokens = make_users(tmp_path, suffix)
    with TestClient(create_app(settings, policy=ApiPolicy(verdict_timeout_s=10.0))) as client:
        api = Api(client, tokens, r, settings)
        read = api.get("/studies/2.25.1234/patient")
        assert read.status_code == 200 and read.headers["cache-control"] == "private, no-store"
        assert read.json() == {
            "patient_name": PLANTED["PatientName"],
            "patient_id": PLANTED["PatientID"],
            "birth_date": PLANTED["PatientBirthDate"],
            "sex": None,
            "accession_number": PLANTED["AccessionNumber"],
            "study_date": None,
        }
        assert api.get("/studies/2.25.1234/patient", user="eng").status_code == 403
        assert api.get("/studies/2.25.1234/patient", user="prod").status_code == 403
        png = api.get(f"/studies/{'p' * 64}/patient")
        assert png.status_code == 404 and "names no patient" in png.json()["detail"]
        assert api.get("/studies/2.25.999/patient").status_code == 404
        # The study itself, to any viewer, names no patient.
        study = api.get("/studies/2.25.1234", user="eng").text
        assert all(value not in study for value in PLANTED.values())

    def mine(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [
            e
            for e in found
            if e["actor"].endswith(suffix) and e["resource"] in ("patient", "/studies/{study_id}/patient")
        ]

    records = mine(kafka.read(topics.AUDIT, lambda found: len(mine(found)) >= 5))
    outcomes = sorted((e["actor"].removesuffix(suffix), e["outcome"], e.get("study_id")) for e in records)
    assert ("rad", "ok", "2.25.1234") in outcomes and ("rad", "not_found", "p" * 64) in outcomes
    assert sum(1 for actor, outcome, _ in outcomes if actor in ("eng", "prod") and outcome == "denied") == 2
    assert all(value not in str(records) for value in PLANTED.values()), "the audit names who read, not whom"
