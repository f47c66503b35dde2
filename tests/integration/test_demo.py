"""``cxr-triage demo`` (what ``make demo`` runs after its set-up) on a private stack: its console output fits on
one screen and says what happened; every framework's log is in the state folder's logs."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from deploy.testing import stack_env
from producers.sample_images import write_samples

pytestmark = pytest.mark.integration

SCREEN_LINES = 40


def test_the_demo_output_fits_a_screen_and_ends_with_what_to_do_next(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = stack_env(home, worker_count=1, skip_model_init=False, feedback_loop=True, gateway=True)
    env["CXR_INITIAL_MODEL_INPUT_SIZE"] = "64"
    data = tmp_path / "data"
    write_samples(data / "images", n=6)  # no labels.csv: the untrained model is served, nothing trained
    dicom = 1 if shutil.which("storescu") else 0
    try:
        done = subprocess.run(
            [sys.executable, "-m", "cxr_triage", "demo", "--data", str(data), "--dicom-studies", str(dicom)],
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
    finally:
        subprocess.run(
            [sys.executable, "-m", "cxr_triage", "down"], env=env, capture_output=True, timeout=180
        )
    console = done.stdout + done.stderr
    assert done.returncode == 0, console
    lines = console.strip().splitlines()
    assert len(lines) <= SCREEN_LINES, console
    assert not [line for line in lines if line.lstrip().startswith('{"ts"')], "log lines on the console"
    assert "Traceback" not in console

    stages = [line for line in lines if re.match(r"\[\d/6\]", line)]
    assert [s[:5] for s in stages] == [f"[{i}/6]" for i in range(1, 7)], console
    assert "✓ 11 components healthy" in stages[0]
    assert "no labels.csv" in stages[1] and "untrained" in stages[1]
    assert "✓ 6 images published as 6 studies" in stages[2]
    assert f"✓ {6 + dicom} of {6 + dicom} studies scored" in stages[4]
    if dicom:
        assert "joined their studies (no second entry)" in stages[5]

    summary = console.split("Summary", 1)[1]
    assert re.search(
        rf"studies scored\s+{6 + dicom} on the worklist; unread by tier: \d+ critical, \d+ urgent, \d+ routine",
        summary,
    )
    assert f"http://127.0.0.1:{env['CXR_API_PORT']}/" in summary
    token = re.search(r"^\s+token\s+(\S+)$", summary, re.MULTILINE)
    assert token and len(token.group(1)) >= 20
    assert env["CXR_PROMETHEUS_URL"] in summary
    assert "The top of the worklist:" in console

    logs = home / "logs"
    for name in ("demo-up.log", "demo-produce.log", "demo-users.log"):
        assert (logs / name).is_file() and (logs / name).stat().st_size > 0, name
