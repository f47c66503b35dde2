"""A DICOM study through the whole stack: gateway -> Kafka -> worker -> Redis -> API -> verdict -> processors.

One study arrives as a PA and a lateral in one association, then a late second PA in another. The worklist
holds it once; each frontal image is read once (the lateral is shown, not read: the untrained model reads
frontal views); the study is as urgent as its most urgent image. Every patient and study tag carries a
planted identifier (``tests.dicom_files.PLANTED``), and none of them, nor any UID, is found on any topic, in
any log of the stack, in any service's metrics or in the CLI's output.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from confluent_kafka import Consumer
from pydicom.uid import generate_uid

from cxr_triage import topics
from cxr_triage.labels import LABELS
from tests.dicom_files import PLANTED, chest_pixels, radiograph
from tests.integration.conftest import Stack
from tests.integration.gateway_support import AE_TITLE, scu, store_status, wait_until
from tests.integration.kafka_support import assign_from_start

pytestmark = pytest.mark.integration

PYDICOM_UID_ROOT = "1.2.826.0.1.3680043.8.498"  # every UID pydicom's generate_uid made in this test


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    from deploy.testing import stack_env

    home = tmp_path_factory.mktemp("dicom-stack")
    env = stack_env(home, worker_count=1, skip_model_init=False, feedback_loop=True, gateway=True)
    env["CXR_INITIAL_MODEL_INPUT_SIZE"] = "128"  # fast on 2 cores; the flow is the same at 320
    env["CXR_RETRAIN_WORKER_ENABLED"] = "false"  # the processors' join is what this test follows
    env["CXR_ROLLOUT_WORKER_ENABLED"] = "false"
    env["CXR_DICOM_AE_TITLE"] = AE_TITLE
    with Stack(home=home, env=env).running() as started:
        yield started


def _all_topics(bootstrap: str) -> str:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"leak-{uuid.uuid4()}"})
    text: list[str] = []
    try:
        for topic in topics.ALL:
            assign_from_start(consumer, topic)
            idle_since = time.monotonic()
            while time.monotonic() - idle_since < 3:
                message = consumer.poll(0.5)
                if message is None or message.error() is not None:
                    continue
                idle_since = time.monotonic()
                text.append(f"{topic} {(message.key() or b'').decode(errors='replace')} ")
                text.append((message.value() or b"").decode(errors="replace"))
    finally:
        consumer.close()
    return "\n".join(text)


def test_a_dicom_study_with_a_late_image_is_one_study_read_image_by_image_and_leaks_nothing(
    stack: Stack, tmp_path: Path
) -> None:
    port = int(stack.env["CXR_DICOM_PORT"])
    made = json.loads(stack.cli("users", "add", "dr-dicom", "--role", "radiologist", "--json").stdout)
    api = httpx.Client(
        base_url=stack.api_url, headers={"Authorization": f"Bearer {made['token']}"}, timeout=30
    )
    uid = generate_uid()
    instances = [
        radiograph(chest_pixels(0), study_uid=uid, view="PA", identifiers=dict(PLANTED)),
        radiograph(chest_pixels(1), study_uid=uid, view="LATERAL", identifiers=dict(PLANTED)),
    ]
    assoc = scu(port)
    for ds in instances:
        assert store_status(assoc, ds)[0] == 0
    assoc.release()  # the association's end publishes the study

    def worklist() -> dict[str, Any]:
        return dict(api.get("/worklist").json())

    listed = wait_until(lambda: (w := worklist())["total"] == 1 and w, 180, "the study on the worklist")
    study_id = listed["items"][0]["study_id"]
    assert study_id.startswith("2.25.") and study_id != uid, "the study is known by its pseudonym"
    first = api.get(f"/studies/{study_id}").json()
    assert [(i["view"], i["scored"]) for i in first["images"]] == [("PA", True), ("LATERAL", False)]
    pa = first["images"][0]
    assert first["image_id"] == pa["image_id"] and first["priority"] == pa["priority"]

    # Its header names another body part: read like any frontal image, and flagged for the reader.
    late = radiograph(
        chest_pixels(2), study_uid=uid, view="PA", identifiers=dict(PLANTED), body_part="ABDOMEN"
    )
    assoc = scu(port)
    assert store_status(assoc, late)[0] == 0
    assoc.release()
    study = wait_until(
        lambda: len((s := api.get(f"/studies/{study_id}").json())["images"]) == 3 and s, 180, "the late image"
    )
    assert worklist()["total"] == 1, "a late image updates its study, never a second entry"
    images = {i["image_id"]: i for i in study["images"]}
    assert images[pa["image_id"]]["priority"] == pa["priority"], "the first image is never read again"
    [late_image] = [
        i for i in study["images"] if i["image_id"] not in {j["image_id"] for j in first["images"]}
    ]
    assert late_image["flags"] == ["body_part:ABDOMEN"] and not any(i["flags"] for i in first["images"])
    read = [i for i in study["images"] if i["scored"]]
    assert [i["view"] for i in read] == ["PA", "PA"]
    most_urgent = max(read, key=lambda i: i["priority"])
    assert (study["image_id"], study["priority"]) == (most_urgent["image_id"], most_urgent["priority"])
    for image in study["images"]:
        assert api.get(image["image_url"]).status_code == 200
        if image["heatmap_url"]:
            assert api.get(image["heatmap_url"], params={"finding": "Edema"}).status_code == 200

    claimed = api.post("/worklist/claim")
    assert claimed.status_code == 200 and claimed.json()["study_id"] == study_id
    verdict = api.post(
        f"/studies/{study_id}/verdict",
        json={"labels": {label: 0 for label in LABELS} | {"No Finding": 1}},
        headers={"Idempotency-Key": str(uuid.uuid4())},
    )
    assert verdict.status_code == 200, verdict.text
    joined = wait_until(
        lambda: (s := json.loads(stack.cli("feedback", "stats", "--json").stdout))["total"] == 1 and s,
        180,
        "the processors to join the verdict with the study's prediction",
    )
    assert worklist()["total"] == 0
    patient = api.get(f"/studies/{study_id}/patient").json()
    assert patient["patient_id"] == PLANTED["PatientID"], "the original stays in the image store, for readers"

    # Nothing names the patient or the study beyond the image store: not a topic, a log line or the CLI.
    cli_output = json.dumps(joined) + stack.cli("status", "--json").stdout
    logs = "\n".join(
        p.read_text(errors="replace") for p in sorted((stack.home / "logs").rglob("*")) if p.is_file()
    )
    scraped = [
        httpx.get(f"http://127.0.0.1:{stack.env[f'CXR_{port}']}/metrics", timeout=10)
        for port in ("API_PORT", "WORKER_METRICS_PORT", "PROCESSORS_PORT", "GATEWAY_METRICS_PORT")
    ]
    assert all(r.status_code == 200 and "cxr_" in r.text for r in scraped), "a service's metrics not read"
    metrics = "\n".join(r.text for r in scraped)
    planted = [*PLANTED.values(), "Zzplanted", "19230817", uid, PYDICOM_UID_ROOT]
    for where, text in (
        ("Kafka", _all_topics(stack.env["CXR_KAFKA_BOOTSTRAP_SERVERS"])),
        ("the stack's logs", logs),
        ("the CLI", cli_output),
        ("the services' metrics", metrics),
    ):
        assert text, f"nothing read from {where}"
        leaked = [value for value in planted if value in text]
        assert not leaked, f"{leaked} found in {where}"
    api.close()
