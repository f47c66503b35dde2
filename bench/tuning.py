"""Measure Triton (Python backend + ONNX Runtime) thread and instance settings, and the cost of the maps.

``python -m bench.tuning [--input-size 224] [--rounds 6] [--json out.json]`` exports the untrained
DenseNet121 and serves it under one model name per setting from a single tritonserver on free ports. Requests
of batch 1 and 8, from one client and from two at once (two workers), then go to the settings in turn, round
after round, and direct ONNX Runtime sessions with the same threads are timed the same way: on a machine
whose other users come and go, interleaving keeps every setting under the same load, so they compare fairly
even when the absolute numbers move. docs/serving.md records a run of it.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import click
import numpy as np
import onnxruntime as ort

from cxr_triage.model.contract import ModelContract
from cxr_triage.model.export import CAM_OUTPUT_NAME, INPUT_NAME, OUTPUT_NAME, export_untrained
from cxr_triage.model.repository import ONNX_FILE, publish_version, staging_dir, write_configs
from cxr_triage.model.serving import ServingSettings
from cxr_triage.model.signature import read_signature
from cxr_triage.settings import Settings
from deploy.testing import free_ports
from deploy.triton_server import bundled_libs_dir, ensure_dist, pytriton_root, server_args, server_env
from inference_worker.triton_client import TritonScorer

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Case:
    intra_op_threads: int
    inter_op_threads: int
    instance_count: int
    allow_spinning: bool

    @property
    def label(self) -> str:
        spin = "spin" if self.allow_spinning else "nospin"
        return f"intra{self.intra_op_threads}-inter{self.inter_op_threads}-inst{self.instance_count}-{spin}"


CASES = (
    Case(1, 1, 1, False),
    Case(2, 1, 1, False),
    Case(2, 1, 1, True),
    Case(1, 1, 2, False),
    Case(2, 1, 2, False),
)
DEFAULT = Case(2, 1, 1, False)


@dataclass(frozen=True)
class Timing:
    server: str  # "triton" or "onnxruntime"
    case: str
    batch: int
    clients: int
    cams: bool
    median_ms: float
    p90_ms: float
    images_per_s: float


def _summary(key: tuple[str, str, int, int, bool], times: list[float], busy_s: float) -> Timing:
    server, case, batch, clients, cams = key
    ordered = sorted(times)
    return Timing(
        server=server,
        case=case,
        batch=batch,
        clients=clients,
        cams=cams,
        median_ms=round(statistics.median(ordered) * 1000, 1),
        p90_ms=round(ordered[int(0.9 * (len(ordered) - 1))] * 1000, 1),
        images_per_s=round(batch * len(times) / busy_s, 1),
    )


def _block(call: Callable[[], object], *, clients: int, requests: int) -> tuple[list[float], float]:
    """``requests`` calls from each of ``clients`` threads at once: the latencies and the wall time."""
    times: list[float] = []
    lock = threading.Lock()

    def client() -> None:
        for _ in range(requests):
            started = time.perf_counter()
            call()
            with lock:
                times.append(time.perf_counter() - started)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return times, time.perf_counter() - started


Calls = dict[tuple[str, str, int, int, bool], Callable[[], object]]


def interleave(calls: Calls, *, rounds: int, requests: int, seed: int = 0) -> list[Timing]:
    """Run every call ``rounds`` times, in a new random order each round, after one warm-up call each."""
    for call in calls.values():
        call()  # warm-up: ORT sizes its memory arena on the first run of a shape
    times: dict[tuple[str, str, int, int, bool], list[float]] = defaultdict(list)
    busy: dict[tuple[str, str, int, int, bool], float] = defaultdict(float)
    order = list(calls)
    rng = random.Random(seed)
    for _ in range(rounds):
        rng.shuffle(order)
        for key in order:
            latencies, wall = _block(calls[key], clients=key[3], requests=requests)
            times[key] += latencies
            busy[key] += wall
    return [_summary(key, times[key], busy[key]) for key in calls]


def ort_session(path: Path, case: Case) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = case.intra_op_threads
    options.inter_op_num_threads = case.inter_op_threads
    spinning = "1" if case.allow_spinning else "0"
    options.add_session_config_entry("session.intra_op.allow_spinning", spinning)
    options.add_session_config_entry("session.inter_op.allow_spinning", spinning)
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def _images(batch: int, size: int) -> np.ndarray:
    return np.random.default_rng(batch).integers(0, 256, (batch, 1, size, size), dtype=np.uint8)


def onnxruntime_calls(path: Path, cases: Sequence[Case], *, size: int, batch: int) -> Calls:
    calls: Calls = {}
    feed = {INPUT_NAME: _images(batch, size)}
    for case in cases:
        if case.instance_count != 1:
            continue  # instances are a Triton notion
        session = ort_session(path, case)
        for cams in (False, True):
            fetch = [OUTPUT_NAME, CAM_OUTPUT_NAME] if cams else [OUTPUT_NAME]
            calls[("onnxruntime", case.label, batch, 1, cams)] = partial(session.run, fetch, feed)
    return calls


def triton_calls(
    url: str, cases: Sequence[Case], *, size: int, batch: int, scorers: list[TritonScorer]
) -> Calls:
    calls: Calls = {}
    images = _images(batch, size)
    for case in cases:
        for cams in (False, True) if case == DEFAULT else (False,):
            scorer = TritonScorer(url, f"tune_{case.label}".replace("-", "_"), timeout_s=300, want_cams=cams)
            scorers.append(scorer)
            for clients in (1, 2) if not cams else (1,):
                calls[("triton", case.label, batch, clients, cams)] = partial(scorer.score, images)
    return calls


def build_repository(settings: Settings, cases: Sequence[Case]) -> Path:
    """One model per case, each serving a copy of the same export as version 1."""
    exported = settings.home / "densenet121.onnx"
    export_untrained(exported, input_size=settings.initial_model_input_size)
    signature = read_signature(exported)
    for case in cases:
        name = f"tune_{case.label}".replace("-", "_")
        staged = staging_dir(settings.model_repository)
        shutil.copyfile(exported, staged / ONNX_FILE)
        folder = settings.model_repository / name
        publish_version(staged, folder, 1)
        serving = ServingSettings(
            intra_op_threads=case.intra_op_threads,
            inter_op_threads=case.inter_op_threads,
            instance_count=case.instance_count,
            allow_spinning=case.allow_spinning,
        )
        contract = ModelContract(input_size=signature.input_size, version="1")
        write_configs(
            folder, model_name=name, signature=signature, version=1, contract=contract, serving=serving
        )
    return exported


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


@contextmanager
def triton(settings: Settings, models: Sequence[str], log: Path) -> Iterator[None]:
    root = pytriton_root()
    dist = ensure_dist(settings.home / "triton" / "dist", source_root=root)
    env = server_env(os.environ, libs_dir=bundled_libs_dir(root))
    with log.open("ab") as out:
        process = subprocess.Popen(
            server_args(settings, dist=dist), env=env, stdout=out, stderr=subprocess.STDOUT
        )
    base = f"{settings.triton_http_url}/v2/models"
    try:
        deadline = time.monotonic() + 300
        while not all(_ready(f"{base}/{name}/ready") for name in models):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"tritonserver did not get ready; see {log}")
            time.sleep(0.5)
        yield
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def measure(settings: Settings, *, rounds: int) -> list[Timing]:
    exported = build_repository(settings, CASES)
    models = [f"tune_{case.label}".replace("-", "_") for case in CASES]
    results: list[Timing] = []
    scorers: list[TritonScorer] = []
    with triton(settings, models, settings.home / "triton.log"):
        for batch, requests in ((1, 8), (8, 2)):
            size = settings.initial_model_input_size
            calls = onnxruntime_calls(exported, CASES, size=size, batch=batch)
            calls |= triton_calls(settings.triton_grpc_url, CASES, size=size, batch=batch, scorers=scorers)
            results += interleave(calls, rounds=rounds, requests=requests)
            logger.info("batch measured", extra={"batch": batch})
    for scorer in scorers:
        scorer.close()
    return results


def report(results: Sequence[Timing], *, input_size: int, rounds: int) -> str:
    lines = [
        f"input {input_size}px, {rounds} interleaved rounds, load average {os.getloadavg()[0]:.1f} at the end",
        f"{'server':<12} {'case':<26} {'batch':>5} {'clients':>7} {'cams':>5} {'median ms':>10} "
        f"{'p90 ms':>8} {'img/s':>7}",
    ]
    lines += [
        f"{t.server:<12} {t.case:<26} {t.batch:>5} {t.clients:>7} {t.cams!s:>5} "
        f"{t.median_ms:>10.1f} {t.p90_ms:>8.1f} {t.images_per_s:>7.1f}"
        for t in sorted(results, key=lambda t: (t.batch, t.server, t.clients, t.cams, t.case))
    ]
    return "\n".join(lines) + "\n"


@click.command(help=__doc__, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--input-size", type=int, default=224, show_default=True)
@click.option("--rounds", type=int, default=6, show_default=True)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write every timing to this file",
)
def main(input_size: int, rounds: int, json_path: Path | None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with tempfile.TemporaryDirectory(prefix="cxr-tuning-") as tmp:
        http, grpc, metrics = free_ports(3)
        settings = Settings(
            home=Path(tmp),
            initial_model_input_size=input_size,
            triton_http_url=f"http://127.0.0.1:{http}",
            triton_grpc_url=f"127.0.0.1:{grpc}",
            triton_metrics_port=metrics,
        )
        results = measure(settings, rounds=rounds)
    click.echo(report(results, input_size=input_size, rounds=rounds), nl=False)
    if json_path is not None:
        json_path.write_text(json.dumps([asdict(t) for t in results], indent=2) + "\n")


if __name__ == "__main__":
    main()
