"""The DICOM gateway against real senders: dcmtk's echoscu / storescu, and pynetdicom for the faults.

Kafka is the session's private broker; every instance is made from a real sample radiograph with an
identifier planted in each patient and study tag (``tests.dicom_files.PLANTED``).
"""

from __future__ import annotations

import io
import itertools
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit, JPEGLSLossless, RLELossless, generate_uid

from cxr_triage.image_store import LocalImageStore
from tests.dicom_files import (
    CR_IMAGE,
    CT_IMAGE,
    MR_IMAGE,
    PLANTED,
    chest_pixels,
    encoded,
    radiograph,
    to_bytes,
)
from tests.integration.gateway_support import (
    AE_TITLE,
    Gateway,
    gateway_env,
    scu,
    send_part_of,
    store_status,
    wait_until,
)
from tests.integration.kafka_support import KafkaBroker
from tests.integration.orthanc_support import run_orthanc

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def gateway(kafka: KafkaBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    for tool in ("storescu", "echoscu", "dcmcjpls"):
        if shutil.which(tool) is None:
            pytest.fail(f"dcmtk's {tool} is missing: run `make setup` (it installs dcmtk)")
    home = tmp_path_factory.mktemp("gateway")
    started = Gateway(home=home, env=gateway_env(home, kafka), kafka=kafka, log=home / "gateway.log")
    started.start()
    try:
        yield started
    finally:
        started.stop()


# storescu proposes one compressed transfer syntax at a time on its command line; a profile proposes them all,
# as a modality that sends what it has does.
_STORESCU_PROFILE = (
    """
[[TransferSyntaxes]]
[Uncompressed]
TransferSyntax1 = LittleEndianExplicit
TransferSyntax2 = LittleEndianImplicit
[JPEGBaseline]
TransferSyntax1 = JPEGBaseline
[JPEGLS]
TransferSyntax1 = JPEGLSLossless
[JPEG2000]
TransferSyntax1 = JPEG2000LosslessOnly
[RLE]
TransferSyntax1 = RLELossless

[[PresentationContexts]]
[Radiographs]
"""
    + "\n".join(
        f"PresentationContext{n} = {sop}\\{syntax}"
        for n, (sop, syntax) in enumerate(
            itertools.product(
                ("DigitalXRayImageStorageForPresentation", "ComputedRadiographyImageStorage"),
                ("Uncompressed", "JPEGBaseline", "JPEGLS", "JPEG2000", "RLE"),
            ),
            start=1,
        )
    )
    + """

[[Profiles]]
[Radiographs]
PresentationContexts = Radiographs
"""
)


def _storescu(gateway: Gateway, *paths: Path, folder: bool = False) -> subprocess.CompletedProcess[str]:
    args = ["storescu", "-v", "-aet", "DCMTK_SENDER", "-aec", AE_TITLE]
    if folder:
        # One association for the folder, each instance in the transfer syntax it is stored in.
        profile = paths[0].parent / "storescu.cfg"
        profile.write_text(_STORESCU_PROFILE)
        args += ["+sd", "+r", "-xf", str(profile), "Radiographs"]
    return subprocess.run(
        [*args, "127.0.0.1", str(gateway.port), *map(str, paths)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_echoscu_is_answered_and_another_ae_title_refused(gateway: Gateway) -> None:
    echo = subprocess.run(["echoscu", "-aec", AE_TITLE, "127.0.0.1", str(gateway.port)], capture_output=True)
    assert echo.returncode == 0, echo.stderr
    wrong = subprocess.run(
        ["echoscu", "-aec", "SOMEONE_ELSE", "127.0.0.1", str(gateway.port)], capture_output=True
    )
    assert wrong.returncode != 0, "an association addressed to another AE title must be refused"


def test_storescu_sends_a_whole_study_folder_in_one_association(gateway: Gateway, tmp_path: Path) -> None:
    uid = generate_uid()
    folder = tmp_path / "Zzplanted_Patientname"  # an export folder named after the patient, as PACS do
    folder.mkdir()
    (folder / "1.dcm").write_bytes(to_bytes(radiograph(chest_pixels(0), study_uid=uid, view="PA")))
    (folder / "2.dcm").write_bytes(to_bytes(radiograph(chest_pixels(1), study_uid=uid, view="LL")))
    # Repeats of the frontal view, in each compressed transfer syntax a modality may send.
    syntaxes = (JPEGLSLossless, RLELossless, JPEG2000Lossless, JPEGBaseline8Bit)
    for n, syntax in enumerate(syntaxes, start=3):
        view = "AP" if syntax == JPEGLSLossless else "PA"
        (folder / f"{n}.dcm").write_bytes(
            encoded(radiograph(chest_pixels(n), study_uid=uid, view=view), syntax)
        )
    started = time.monotonic()
    sent = _storescu(gateway, folder, folder=True)
    assert sent.returncode == 0, sent.stderr
    study = gateway.study(uid, images=6)
    assert time.monotonic() - started < 25, "published when the association ended, before the 30 s quiet time"
    assert len(gateway.versions(uid)) == 1, "one association, one study event"
    assert study["study_id"].startswith("2.25.") and study["study_id"] != uid
    assert sorted(image["view"] for image in study["images"]) == ["AP", "LATERAL", "PA", "PA", "PA", "PA"]
    frontal = next(image for image in study["images"] if image["view"] != "LATERAL")
    assert study["image_uri"] == frontal["image_uri"], "the study's image is its first frontal one"
    pseudonyms = ("patient", "patient_name", "birth_date", "accession", "institution")
    assert [study[field][:2] for field in pseudonyms] == ["p-", "n-", "b-", "a-", "i-"]
    assert len({image["image_id"] for image in study["images"]}) == 6
    store = LocalImageStore(gateway.home / "images")
    received = set()
    for image in study["images"]:  # the original instances stay in the image store, identifiers and all
        original = dcmread(io.BytesIO(store.get(image["image_uri"])), stop_before_pixels=True)
        assert original.StudyInstanceUID == uid and str(original.PatientName) == PLANTED["PatientName"]
        received.add(original.file_meta.TransferSyntaxUID)
    assert received >= set(syntaxes), "each instance was taken in the transfer syntax it was sent in"


def test_storescu_single_file_and_a_ct_refused_with_a_status_and_a_dead_letter(
    gateway: Gateway, tmp_path: Path
) -> None:
    uid = generate_uid()
    single = tmp_path / "cr.dcm"
    single.write_bytes(to_bytes(radiograph(study_uid=uid, sop_class=CR_IMAGE, modality="CR", view="AP")))
    assert _storescu(gateway, single).returncode == 0
    assert [image["view"] for image in gateway.study(uid)["images"]] == ["AP"]
    ct = tmp_path / "ct.dcm"
    ct.write_bytes(to_bytes(radiograph(sop_class=CT_IMAGE, modality="CT")))
    refused = _storescu(gateway, ct)
    assert "Received Store Response (Refused: SOPClassNotSupported)" in refused.stderr, refused.stderr
    letters = gateway.dead_letters(lambda found: any("CT Image Storage" in m["reason"] for m in found))
    assert any("CT Image Storage is not a chest radiograph" in m["reason"] for m in letters)


def _multi_frame() -> Dataset:
    ds = radiograph(chest_pixels(size=128))
    ds.NumberOfFrames = 2
    ds.PixelData = ds.PixelData * 2
    return ds


def _no_pixels() -> Dataset:
    ds = radiograph(chest_pixels(size=128))
    del ds.PixelData
    return ds


def _bomb() -> Dataset:
    ds = radiograph(chest_pixels(size=64))
    ds.Rows = ds.Columns = 30000  # 900 megapixels declared, 64x64 sent
    return ds


def _truncated() -> Dataset:
    ds = radiograph(chest_pixels(size=128))
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    return ds


BAD: list[tuple[str, Callable[[], Dataset], int, str]] = [
    ("mr", lambda: radiograph(sop_class=MR_IMAGE, modality="MR"), 0x0122, "MR Image Storage is not a chest"),
    ("ct-as-dx", lambda: radiograph(modality="CT"), 0xA900, "DICOM modality 'CT' is not a radiograph"),
    ("multi-frame", _multi_frame, 0xC001, "multi-frame DICOM (2 frames)"),
    ("no-pixels", _no_pixels, 0xC000, "DICOM has no pixel data"),
    ("truncated-pixels", _truncated, 0xC000, "DICOM pixel data cannot be decoded"),
    ("decompression-bomb", _bomb, 0xA700, "image is 30000x30000, over the"),
]


@pytest.mark.parametrize(("make", "status", "reason"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_instances_get_a_dimse_failure_and_a_dead_letter(
    gateway: Gateway, make: Callable[[], Dataset], status: int, reason: str
) -> None:
    assoc = scu(gateway.port)
    try:
        got, comment = store_status(assoc, make())
        assert (got, comment) == (status, comment) and reason[:40] in comment, (hex(got), comment)
        uid = generate_uid()  # the gateway keeps serving the same sender: the next good instance is stored
        assert store_status(assoc, radiograph(study_uid=uid))[0] == 0x0000
    finally:
        assoc.release()
    gateway.study(uid)
    letters = gateway.dead_letters(lambda found: any(reason in m["reason"] for m in found))
    assert any(reason in m["reason"] and m["stage"] == "producer" and m["sha256"] != "" for m in letters)


def test_a_late_image_republishes_its_study_whole(gateway: Gateway) -> None:
    uid = generate_uid()
    for index in range(2):
        assoc = scu(gateway.port)
        assert store_status(assoc, radiograph(chest_pixels(index), study_uid=uid))[0] == 0
        assoc.release()
        gateway.study(uid, images=index + 1)
    first, second = gateway.versions(uid)
    assert (len(first["images"]), len(second["images"])) == (1, 2)
    assert second["images"][0] == first["images"][0], "the first image is carried along, not made anew"
    assert second["received_at"] == first["received_at"], "the study's age counts from its first image"


def test_an_aborted_association_keeps_what_was_acknowledged(gateway: Gateway) -> None:
    uid = generate_uid()
    assoc = scu(gateway.port)
    assert store_status(assoc, radiograph(study_uid=uid))[0] == 0
    assoc.abort()
    gateway.study(uid)
    echo = scu(gateway.port)
    assert echo.send_c_echo().Status == 0, "the gateway still serves"
    echo.release()


def _metric(gateway: Gateway, sample: str) -> float:
    """One sample of the gateway's /metrics, by its name and labels as exposed; 0 when not exposed yet."""
    text = httpx.get(f"http://127.0.0.1:{gateway.metrics_port}/metrics", timeout=10).text
    return next((float(line.split()[-1]) for line in text.splitlines() if line.startswith(sample + " ")), 0.0)


def test_a_sender_that_never_releases_is_cut_off_and_its_study_published(gateway: Gateway) -> None:
    uid = generate_uid()
    idle = scu(gateway.port)
    assert store_status(idle, radiograph(study_uid=uid))[0] == 0
    stored_at = time.monotonic()
    other = scu(gateway.port)  # another sender is served meanwhile
    assert other.send_c_echo().Status == 0
    other.release()
    wait_until(lambda: not idle.is_established, 30, "the gateway to end the silent association (4 s timeout)")
    # Published because the gateway ended the association, not after the 30 s quiet time.
    gateway.study(uid, timeout_s=max(1.0, 25.0 - (time.monotonic() - stored_at)))
    assert _metric(gateway, 'cxr_gateway_associations_total{ending="timed_out"}') >= 1


@pytest.mark.parametrize("how", ["aborted", "timed out"])
def test_an_instance_cut_off_mid_transfer_is_dead_lettered_and_nothing_else_is_lost(
    gateway: Gateway, how: str
) -> None:
    uid = generate_uid()
    whole, cut = radiograph(chest_pixels(0), study_uid=uid), radiograph(chest_pixels(1), study_uid=uid)
    reason = f"association {how} mid-transfer"

    def cut_off(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [m for m in found if reason in m["reason"]]

    before = len(cut_off(gateway.dead_letters(lambda _: False, timeout_s=5)))
    sender = scu(gateway.port)
    assert store_status(sender, whole)[0] == 0
    assert send_part_of(sender, cut) >= 2
    if how == "aborted":
        sender.abort()
    else:  # the sender goes silent mid-instance: the gateway's network timeout (4 s) ends it
        wait_until(lambda: not sender.is_established, 30, "the gateway to cut off the stalled sender")
    letters = cut_off(gateway.dead_letters(lambda found: len(cut_off(found)) > before))
    assert len(letters) == before + 1, "one dead letter for the one instance cut off"
    assert all(m["error_type"] == "IncompleteTransfer" and "send it again" in m["reason"] for m in letters)
    assert len(gateway.study(uid)["images"]) == 1, "what was acknowledged is published, the cut one is not"

    again = scu(gateway.port)  # the sender sends the cut instance again: it joins its study
    assert store_status(again, cut)[0] == 0
    again.release()
    assert len(gateway.study(uid, images=2)["images"]) == 2


def test_a_killed_gateway_publishes_what_it_acknowledged_when_it_starts_again(gateway: Gateway) -> None:
    uid = generate_uid()
    held = scu(gateway.port)  # the association stays open: the study is not due before the kill
    assert store_status(held, radiograph(study_uid=uid))[0] == 0
    gateway.stop(sig=9)
    held.abort()
    assert not gateway.versions(uid), "not published before the kill"
    gateway.start(dicom_quiet_s="1")
    gateway.study(uid)


def test_no_identifier_reaches_kafka_the_logs_or_the_dead_letters(gateway: Gateway) -> None:
    assoc = scu(gateway.port)
    assert (
        store_status(assoc, radiograph(modality="CT"))[0] != 0
    )  # a dead letter made from a planted instance
    uid = generate_uid()
    assert store_status(assoc, radiograph(study_uid=uid))[0] == 0
    assoc.release()
    gateway.study(uid)
    # pydicom's UID root: every StudyInstanceUID, SeriesInstanceUID and SOPInstanceUID these tests made.
    planted = [*PLANTED.values(), "Zzplanted", "PIDPLANTED", "19230817", uid, "1.2.826.0.1.3680043.8.498"]
    for where, text in (
        ("studies topic", str(gateway.studies(lambda _: False, timeout_s=5))),
        ("dead letters", str(gateway.dead_letters(lambda _: False, timeout_s=5))),
        ("gateway log", gateway.log.read_text(errors="replace")),
        ("gateway metrics", httpx.get(f"http://127.0.0.1:{gateway.metrics_port}/metrics", timeout=10).text),
    ):
        leaked = [value for value in planted if value in text]
        assert not leaked, f"{leaked} in the {where}"


def test_orthanc_as_a_pacs_forwards_a_stored_study_to_the_gateway(gateway: Gateway, tmp_path: Path) -> None:
    uid = generate_uid()
    modality = (AE_TITLE, "127.0.0.1", gateway.port)
    with run_orthanc(tmp_path / "orthanc", {"cxr-gateway": modality}) as pacs:
        assert pacs.echo("cxr-gateway") == 200, "Orthanc's C-ECHO to the gateway"
        uploaded = [
            pacs.upload(to_bytes(radiograph(chest_pixels(i), study_uid=uid, view=view)))
            for i, view in enumerate(("PA", "LL"))
        ]
        (orthanc_study,) = {entry["ParentStudy"] for entry in uploaded}
        sent = pacs.forward_study(orthanc_study, "cxr-gateway")
        assert sent.get("InstancesCount", 2) == 2 and sent.get("FailedInstancesCount", 0) == 0, sent
    study = gateway.study(uid, images=2)
    assert sorted(image["view"] for image in study["images"]) == ["LATERAL", "PA"]
    assert len(gateway.versions(uid)) == 1, "one forward, one association, one study event"
