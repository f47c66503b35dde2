"""``cxr-triage produce``: DICOM studies grouped, files named by hash, ``--watch`` on an export folder,
``--rate`` / ``--burst``; against the session's private Kafka broker."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom.uid import generate_uid

from cxr_triage import topics
from cxr_triage.ingest.pseudonym import pseudonymiser
from cxr_triage.settings import Settings
from deploy.testing import cxr, free_ports, stack_env
from tests.dicom_files import PLANTED, chest_pixels, radiograph, to_bytes
from tests.factories import jpeg_bytes, png_bytes
from tests.integration.kafka_support import KafkaBroker, read_topic

pytestmark = pytest.mark.integration


@pytest.fixture()
def env(kafka: KafkaBroker, tmp_path: Path) -> dict[str, str]:
    made = stack_env(tmp_path / "home")
    made["CXR_KAFKA_BOOTSTRAP_SERVERS"] = kafka.bootstrap
    return made


def _pseudonym(env: dict[str, str], uid: str) -> str:
    return pseudonymiser(Settings(home=Path(env["CXR_HOME"]), pseudonym_key=None)).uid(uid)


def _studies(
    kafka: KafkaBroker, ids: set[str], *, images: int = 1, timeout_s: float = 30
) -> list[dict[str, Any]]:
    def mine(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [m for m in found if m["study_id"] in ids]

    def done(found: list[dict[str, Any]]) -> bool:
        return {m["study_id"] for m in mine(found) if len(m["images"]) >= images} == ids

    return mine(read_topic(kafka.bootstrap, topics.STUDIES, done, timeout_s=timeout_s))


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_a_study_folder_becomes_one_study_and_files_are_named_by_hash(
    env: dict[str, str], kafka: KafkaBroker, tmp_path: Path
) -> None:
    uid = generate_uid()
    folder = tmp_path / "Zzplanted_Patientname"
    folder.mkdir()
    pa, lateral = (
        to_bytes(radiograph(chest_pixels(0), study_uid=uid)),
        to_bytes(radiograph(chest_pixels(1), study_uid=uid, view="LL")),
    )
    (folder / "IM1").write_bytes(pa)
    (folder / "IM2").write_bytes(lateral)
    (folder / "extra.png").write_bytes(png_bytes(5))
    (folder / "broken.jpg").write_bytes(jpeg_bytes(6)[:300])
    done = cxr(["produce", "--json", str(folder)], env)
    assert done.returncode == 1, "a rejected file makes the exit status 1"
    out = json.loads(done.stdout)
    assert (out["n_studies"], out["n_published"], out["n_rejected"]) == (2, 3, 1)
    assert "Zzplanted" not in done.stdout + done.stderr and str(folder) not in done.stdout + done.stderr
    assert {entry["sha256"] for entry in out["published"]} == {_sha(pa), _sha(lateral), _sha(png_bytes(5))}
    assert out["rejected"] == [{"sha256": _sha(jpeg_bytes(6)[:300]), "reason": out["rejected"][0]["reason"]}]
    study_id = _pseudonym(env, uid)
    (study,) = _studies(kafka, {study_id}, images=2)
    assert sorted(image["view"] for image in study["images"]) == ["LATERAL", "PA"]
    assert PLANTED["PatientID"] not in json.dumps(study)


def test_a_late_file_republishes_its_study_whole_and_a_file_given_again_goes_again(
    env: dict[str, str], kafka: KafkaBroker, tmp_path: Path
) -> None:
    uid = generate_uid()
    study_id = _pseudonym(env, uid)
    first, late = tmp_path / "IM1", tmp_path / "IM2"
    first.write_bytes(to_bytes(radiograph(chest_pixels(0), study_uid=uid)))
    late.write_bytes(to_bytes(radiograph(chest_pixels(1), study_uid=uid, view="LL")))
    assert cxr(["produce", str(first)], env).returncode == 0
    second_run = cxr(["produce", "--json", str(late)], env)
    assert second_run.returncode == 0, second_run.stderr
    assert json.loads(second_run.stdout)["n_studies"] == 1

    def versions(n: int) -> list[dict[str, Any]]:
        found = read_topic(
            kafka.bootstrap,
            topics.STUDIES,
            lambda got: sum(m["study_id"] == study_id for m in got) >= n,
            timeout_s=30,
        )
        return [m for m in found if m["study_id"] == study_id]

    # The late image's run publishes the study with the image of the run before, in the order they came.
    assert [[i["view"] for i in v["images"]] for v in versions(2)] == [["PA"], ["PA", "LATERAL"]]
    assert cxr(["produce", str(first)], env).returncode == 0  # asked again: published again, whole
    assert [len(v["images"]) for v in versions(3)] == [1, 2, 2]


def _start_watch(env: dict[str, str], folder: Path, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "cxr_triage", "produce", "--watch", str(folder), *args],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip


@pytest.fixture()
def watch_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "pacs-export"
    folder.mkdir()
    return folder


@pytest.fixture()
def watcher(env: dict[str, str], watch_dir: Path) -> Iterator[subprocess.Popen[bytes]]:
    process = _start_watch(env, watch_dir, "--settle-s", "1", "--give-up-s", "20", "--quiet-s", "2")
    yield process
    if process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def test_watch_takes_files_only_once_they_are_whole(
    env: dict[str, str], kafka: KafkaBroker, watch_dir: Path, watcher: subprocess.Popen[bytes]
) -> None:
    uid = generate_uid()
    study_id = _pseudonym(env, uid)
    first, second = (to_bytes(radiograph(chest_pixels(i), study_uid=uid)) for i in range(2))
    (watch_dir / "IM1.dcm").write_bytes(first[: len(first) // 2])  # a writer half-way through, then paused
    (watch_dir / "IM2.dcm.part").write_bytes(second)  # written under a temporary name
    time.sleep(5)
    assert _studies(kafka, {study_id}, timeout_s=3) == [], "nothing published from a half-written file"
    with (watch_dir / "IM1.dcm").open("ab") as handle:
        handle.write(first[len(first) // 2 :])
    (watch_dir / "IM2.dcm.part").rename(watch_dir / "IM2.dcm")
    (study,) = [m for m in _studies(kafka, {study_id}, images=2) if len(m["images"]) == 2]
    assert len(_studies(kafka, {study_id}, timeout_s=5)) == 1, "published once, with both images"
    assert {image["sha256"] for image in study["images"]} == {_sha(first), _sha(second)}
    letters = read_topic(kafka.bootstrap, topics.DLQ, lambda _: False, timeout_s=3)
    assert not [m for m in letters if m.get("sha256") in {_sha(first[: len(first) // 2]), _sha(second)}]
    assert watcher.poll() is None


def test_watch_dead_letters_a_file_that_stays_broken(
    env: dict[str, str], kafka: KafkaBroker, watch_dir: Path
) -> None:
    metrics_port = free_ports(1)[0]
    process = _start_watch(
        env | {"CXR_PRODUCER_METRICS_PORT": str(metrics_port)},
        watch_dir,
        "--settle-s",
        "0.5",
        "--give-up-s",
        "2",
    )
    try:
        broken = jpeg_bytes(9)[:500]
        (watch_dir / "broken.jpg").write_bytes(broken)
        (watch_dir / "notes.txt").write_bytes(b"not an image")  # not an image name: never looked at
        found = read_topic(
            kafka.bootstrap,
            topics.DLQ,
            lambda f: any(m.get("sha256") == _sha(broken) for m in f),
            timeout_s=30,
        )
        (letter,) = [m for m in found if m.get("sha256") == _sha(broken)]
        assert letter["source"] == "watch" and "truncated" in letter["reason"]
        # ... and counted on its /metrics, by the reason's kind, without any file name.
        metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
        assert 'cxr_producer_rejected_total{kind="unreadable"} 1.0' in metrics  # given up on after 2 s
        assert 'cxr_producer_files_total{outcome="rejected"} 1.0' in metrics
        assert 'cxr_producer_files_total{outcome="stored"} 0.0' in metrics
        assert "broken" not in metrics
    finally:
        os.kill(process.pid, signal.SIGTERM)
        _, err = process.communicate(timeout=30)
    assert process.returncode == 0 and b"broken.jpg" not in err


@pytest.mark.parametrize("way", ["files", "watch"])
def test_rate_and_burst_shape_publication(
    env: dict[str, str], kafka: KafkaBroker, tmp_path: Path, way: str
) -> None:
    folder = tmp_path / "export"
    folder.mkdir()
    images = [png_bytes(100 + seed if way == "files" else 200 + seed) for seed in range(6)]
    files = []
    for n, data in enumerate(images):
        path = folder / f"s{n}.png"
        path.write_bytes(data)
        files.append(path)
    ids = {_sha(data) for data in images}  # a PNG is a study of its own, named by its content hash
    shaping = ["--rate", "4/s", "--burst", "2"]
    if way == "files":
        done = cxr(["produce", "--json", *shaping, *map(str, files)], env)
        assert done.returncode == 0, done.stderr
        assert {entry["study_id"] for entry in json.loads(done.stdout)["published"]} == ids
        watcher = None
    else:
        watcher = _start_watch(env, folder, "--settle-s", "1", *shaping)
    try:
        # When each study was sent (its Kafka timestamp): the files were all taken first, then paced out.
        events = read_topic(
            kafka.bootstrap,
            topics.STUDIES,
            lambda got: {m["study_id"] for m in got} >= ids,
            timeout_s=60,
            timestamps=True,
        )
    finally:
        if watcher is not None:
            os.kill(watcher.pid, signal.SIGTERM)
            watcher.wait(timeout=30)
    times = sorted(m["_ts"] for m in events if m["study_id"] in ids)
    assert len(times) == 6
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # Two at once, then one every 0.25 s at least: four paced gaps, the whole run at least 1 s.
    assert sum(gap >= 0.2 for gap in gaps) >= 4 and times[-1] - times[0] >= 0.9


def test_produce_needs_paths_or_watch(env: dict[str, str], tmp_path: Path) -> None:
    none = cxr(["produce"], env)
    assert none.returncode == 2 and "give files or folders to publish, or --watch DIR" in none.stderr
    bad_rate = cxr(["produce", "--rate", "fast", str(tmp_path)], env)
    assert bad_rate.returncode == 2 and "e.g. 5/s" in bad_rate.stderr
