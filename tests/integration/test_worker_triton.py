"""The served model on a real tritonserver (the nvidia-pytriton wheel's, Python backend only).

The server is started here on free ports with a model exported at a small input size for speed.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from cxr_triage.cams import encode_cams
from cxr_triage.imaging import decode_grayscale, resize_gray
from cxr_triage.labels import NUM_LABELS
from cxr_triage.model.export import build_densenet121, export_model
from cxr_triage.model.repository import ONNX_FILE, add_version, ensure_model, serve_version, serving_version
from cxr_triage.priority import priorities
from cxr_triage.settings import Settings
from cxr_triage.sla import SlaPolicy
from inference_worker.errors import StageUnavailable
from inference_worker.triton_client import TritonScorer
from tests.integration.conftest import free_port

pytestmark = pytest.mark.integration

SIZE = 64
MODEL = "cxr_it"
HTTP, GRPC, METRICS = free_port(), free_port(), free_port()
DATASET = Path("/work/shared/datasets/cxr-public/images")


def _server_dir(workdir: Path) -> Path:
    """A copy of the wheel's tritonserver whose Python backend has the stub of this interpreter's version."""
    import pytriton

    source = Path(pytriton.__file__).parent / "tritonserver"
    target = workdir / "tritonserver"
    for name in ("bin", "backends", "caches"):
        shutil.copytree(source / name, target / name)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    shutil.copy2(
        source / "python_backend_stubs" / version / "triton_python_backend_stub",
        target / "backends" / "python",
    )
    return target


def _server_env() -> dict[str, str]:
    site = Path(sysconfig.get_paths()["purelib"])
    env = dict(os.environ)
    # The interpreter's own libpython first, or the stub loads the system one and the model fails to load.
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        [
            str(sysconfig.get_config_var("LIBDIR")),
            str(site / "nvidia_pytriton.libs"),
            env.get("LD_LIBRARY_PATH", ""),
        ]
    )
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def _ready(path: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{HTTP}{path}", timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    home = tmp_path_factory.mktemp("triton-home")
    settings = Settings(home=home, model_name=MODEL, triton_grpc_url=f"127.0.0.1:{GRPC}")
    ensure_model(settings, input_size=SIZE)
    return settings


@pytest.fixture(scope="module")
def triton(repository: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, float]]:
    server = _server_dir(tmp_path_factory.mktemp("triton-bin"))
    log = (repository.home / "tritonserver.log").open("w")
    started = time.monotonic()
    process = subprocess.Popen(
        [
            str(server / "bin" / "tritonserver"),
            f"--model-repository={repository.model_repository}",
            f"--backend-directory={server / 'backends'}",
            f"--http-port={HTTP}",
            f"--grpc-port={GRPC}",
            f"--metrics-port={METRICS}",
            "--model-control-mode=poll",
            "--repository-poll-secs=2",
        ],
        env=_server_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = started + 120
        while not _ready(f"/v2/models/{MODEL}/ready"):
            if process.poll() is not None or time.monotonic() > deadline:
                log.flush()
                pytest.fail(
                    f"tritonserver did not get ready:\n{(repository.home / 'tritonserver.log').read_text()}"
                )
            time.sleep(0.1)
        yield {"load_s": time.monotonic() - started}
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=40)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@pytest.fixture(scope="module")
def reference(repository: Settings) -> ort.InferenceSession:
    path = repository.model_repository / MODEL / "1" / ONNX_FILE
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.fixture
def scorer(repository: Settings, triton: dict[str, float]) -> Iterator[TritonScorer]:
    client = TritonScorer(repository.triton_grpc_url, MODEL, timeout_s=60)
    yield client
    client.close()


def test_server_loads_the_python_backend_model(triton: dict[str, float], scorer: TritonScorer) -> None:
    assert scorer.wait_until_ready(stop=threading.Event())
    assert scorer.ready_version() == "1"
    print(f"tritonserver start + model load: {triton['load_s']:.2f} s")


@pytest.mark.parametrize("batch", [1, 5, 40])
def test_probabilities_match_onnxruntime(
    scorer: TritonScorer, reference: ort.InferenceSession, batch: int
) -> None:
    images = np.random.default_rng(batch).integers(0, 256, (batch, 1, SIZE, SIZE), dtype=np.uint8)
    scores = scorer.score(images)  # 40 > max_batch_size 32: sent as two requests
    expected, expected_cams = reference.run(["probabilities", "cams"], {"image": images})
    assert scores.probabilities.shape == (batch, NUM_LABELS)
    assert scores.probabilities.dtype == np.float32
    assert np.abs(scores.probabilities - expected).max() <= 1e-5
    assert scores.cams is not None and scores.cams.shape == (batch, NUM_LABELS, SIZE // 32, SIZE // 32)
    assert np.abs(scores.cams - expected_cams).max() <= 1e-4
    assert scores.model_versions == ["1"] * batch


def test_maps_are_left_out_when_not_asked_for(repository: Settings, triton: dict[str, float]) -> None:
    client = TritonScorer(repository.triton_grpc_url, MODEL, timeout_s=60, want_cams=False)
    scores = client.score(np.zeros((2, 1, SIZE, SIZE), dtype=np.uint8))
    assert scores.cams is None and scores.probabilities.shape == (2, NUM_LABELS)
    client.close()


def test_real_radiographs_score_to_valid_priorities(scorer: TritonScorer) -> None:
    files = sorted(DATASET.glob("*.jpg"))[:8]
    if not files:
        pytest.skip(f"shared dataset not present at {DATASET}")
    batch = np.stack([resize_gray(decode_grayscale(f.read_bytes(), "image/jpeg"), SIZE) for f in files])
    scores = scorer.score(batch)
    values = priorities(scores.probabilities)
    assert values.shape == (len(files),)
    assert ((values >= 0) & (values <= 1)).all()
    assert scores.cams is not None
    assert all(encode_cams(maps) is not None for maps in scores.cams)  # DenseNet121 has real maps


def test_the_contract_comes_from_triton_and_a_wrong_size_is_refused(scorer: TritonScorer) -> None:
    contract = scorer.contract()
    assert (contract.input_size, contract.version) == (SIZE, "1")
    assert contract.tiers(SlaPolicy()).source == "fallback"  # the untrained model states no thresholds
    with pytest.raises(StageUnavailable, match="triton"):
        scorer.score(np.zeros((1, 1, SIZE * 2, SIZE * 2), dtype=np.uint8))  # shaped for another version
    assert scorer._contract is None  # forgotten: the next batch asks Triton again
    assert scorer.contract() == contract


def test_unreachable_triton_is_stage_unavailable() -> None:
    client = TritonScorer("127.0.0.1:18109", MODEL, timeout_s=5)
    with pytest.raises(StageUnavailable) as info:
        client.score(np.zeros((1, 1, SIZE, SIZE), dtype=np.uint8))
    assert info.value.stage == "triton"
    stop = threading.Event()
    stop.set()
    assert client.wait_until_ready(stop=stop) is False
    client.close()


def test_a_served_version_switch_needs_no_restart(repository: Settings, scorer: TritonScorer) -> None:
    # Last in this module: it switches the served version from 1 to 2.
    staged = repository.home / "v2.onnx"
    export_model(build_densenet121(seed=99), staged, input_size=SIZE, metadata={"cxr.weights": "test"})
    version = add_version(repository, staged, metadata={"source": "test"})
    assert version == 2
    images = np.zeros((2, 1, SIZE, SIZE), dtype=np.uint8)
    time.sleep(4)  # two poll periods: adding a version must not change what is served
    assert scorer.score(images).model_versions == ["1", "1"]

    serve_version(repository, 2)
    assert serving_version(repository) == 2
    deadline = time.monotonic() + 60
    seen: list[str] = []
    while not seen or seen[-1] != "2":
        assert time.monotonic() < deadline, "Triton did not serve version 2 within 60 s"
        try:
            seen += scorer.score(images).model_versions[:1]
        except StageUnavailable:
            seen.append("unavailable")
        time.sleep(0.2)
    while _ready(f"/v2/models/{MODEL}/versions/1/ready"):  # and version 1 is unloaded
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert scorer.score(images).model_versions == ["2", "2"]
    scorer.invalidate()
    assert scorer.contract().version == "2"
    print(f"answers while switching: {seen}")
