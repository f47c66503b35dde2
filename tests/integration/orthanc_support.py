"""Orthanc (Debian's package) as a PACS for tests: own ports, own storage, the gateway as a DICOM modality."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from deploy.testing import free_ports
from tests.integration.conftest import wait_for_port

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"


@dataclass
class Orthanc:
    url: str
    aet: str

    def upload(self, data: bytes) -> dict[str, Any]:
        response = httpx.post(f"{self.url}/instances", content=data, timeout=30)
        response.raise_for_status()
        uploaded: dict[str, Any] = response.json()
        return uploaded

    def forward_study(self, orthanc_study_id: str, modality: str) -> dict[str, Any]:
        """Orthanc's C-STORE of a whole study to ``modality`` (one association), as a PACS route would."""
        response = httpx.post(
            f"{self.url}/modalities/{modality}/store",
            json={"Resources": [orthanc_study_id], "Synchronous": True},
            timeout=120,
        )
        response.raise_for_status()
        sent: dict[str, Any] = response.json()
        return sent

    def echo(self, modality: str) -> int:
        return httpx.post(f"{self.url}/modalities/{modality}/echo", json={}, timeout=30).status_code


@contextmanager
def run_orthanc(home: Path, modalities: dict[str, tuple[str, str, int]]) -> Iterator[Orthanc]:
    """Orthanc on loopback (HTTP and DICOM on free ports), knowing ``modalities`` by name: (AET, host, port)."""
    if not Path(ORTHANC).exists():
        raise AssertionError("Orthanc is not installed: run `make setup` (it installs Debian's orthanc)")
    http_port, dicom_port = free_ports(2)
    config = {
        "Name": "cxr-test-pacs",
        "StorageDirectory": str(home / "storage"),
        "IndexDirectory": str(home / "index"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": "TEST_PACS",
        # HTTP answers loopback only. Orthanc 1.10 cannot bind its DICOM port to one interface, so it talks
        # DICOM only to the modalities below, from their own (loopback) address, with its AE title called.
        "RemoteAccessAllowed": False,
        "DicomAlwaysAllowEcho": False,
        "DicomAlwaysAllowStore": False,
        "DicomAlwaysAllowFind": False,
        "DicomAlwaysAllowMove": False,
        "DicomAlwaysAllowGet": False,
        "DicomCheckModalityHost": True,
        "DicomCheckCalledAet": True,
        "AuthenticationEnabled": False,
        "DicomModalities": {name: list(entry) for name, entry in modalities.items()},
        "Plugins": [],
    }
    home.mkdir(parents=True, exist_ok=True)
    (home / "orthanc.json").write_text(json.dumps(config, indent=2))
    with (home / "orthanc.log").open("ab") as log:
        process = subprocess.Popen([ORTHANC, str(home / "orthanc.json")], stdout=log, stderr=log, cwd=home)
    try:
        wait_for_port(http_port, timeout_s=60)
        deadline = time.monotonic() + 30
        while httpx.get(f"http://127.0.0.1:{http_port}/system", timeout=5).status_code != 200:
            if time.monotonic() > deadline:
                raise AssertionError("Orthanc did not answer /system")
            time.sleep(0.3)
        yield Orthanc(url=f"http://127.0.0.1:{http_port}", aet="TEST_PACS")
    finally:
        process.terminate()
        process.wait(timeout=30)
