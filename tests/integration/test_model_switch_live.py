"""A model carries its own contract: promoting a 128-px model while a 224-px one is served, mid-stream.

A plain stack (the untrained initial model at the default 224 px, one worker) scores a steady stream of
studies; halfway, a 128-px version with its own tier thresholds is added and served, as ``promote`` does. The
worker reads the new input size and thresholds from Triton by itself. Afterwards every study is on the
worklist exactly once, each scored by one version at that version's size (its stored probabilities equal
what ONNX Runtime computes offline from the same image with that version's file), and filed in the tier that
version's thresholds give.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import onnxruntime as ort
import pytest

from cxr_triage.imaging import decode_grayscale, resize_gray
from cxr_triage.labels import LABELS
from cxr_triage.model.contract import ModelContract
from cxr_triage.model.export import build_densenet121, export_model
from cxr_triage.model.repository import ONNX_FILE, add_version, model_dir, serve_version
from cxr_triage.redis_client import open_redis
from cxr_triage.settings import Settings
from cxr_triage.sla import TIERS, SlaPolicy
from cxr_triage.worklist.keys import WorklistKeys
from tests.integration.streaming import (
    Stream,
    StreamStack,
    _http_ok,
    assert_each_once_on_the_worklist,
    make_studies,
    running_stream_stack,
    wait_for,
)

pytestmark = pytest.mark.integration

THRESHOLDS = {"cxr.threshold": "0.3", "cxr.tier.urgent": "0.3", "cxr.tier.critical": "0.75"}


@pytest.fixture(scope="module")
def plain_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StreamStack]:
    # No input size set anywhere: the untrained model is 224 px. One worker, one partition: in publish order.
    with running_stream_stack(tmp_path_factory, "switch", workers=1, env={"CXR_KAFKA_PARTITIONS": "1"}) as s:
        yield s


def offline_probabilities(settings: Settings, version: str, image: bytes) -> np.ndarray:
    path = model_dir(settings) / version / ONNX_FILE
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    size = int(session.get_inputs()[0].shape[-1])
    pixels = resize_gray(decode_grayscale(image), size)[None]
    return np.asarray(session.run(["probabilities"], {"image": pixels})[0][0])


def test_promoting_a_128_px_model_while_224_is_served_mid_stream(plain_stack: StreamStack) -> None:
    settings = plain_stack.settings
    served = (model_dir(settings) / "config.pbtxt").read_text()
    assert "dims: [ 1, 224, 224 ]" in served  # the plain stack's untrained model
    exported = export_model(
        build_densenet121(seed=5), plain_stack.folder / "v2.onnx", input_size=128, metadata=THRESHOLDS
    )
    version = add_version(settings, exported, metadata={"source": "test"})
    assert version == 2

    studies = make_studies(plain_stack.folder, first=0, count=36)
    stream = Stream(plain_stack, studies, per_s=3).start()
    stream.wait_for(12, timeout_s=60)
    serve_version(settings, version)
    http = f"{settings.triton_http_url}/v2/models/{settings.model_name}/versions"
    wait_for(
        "Triton to serve version 2 only",
        lambda: _http_ok(f"{http}/2/ready") and not _http_ok(f"{http}/1/ready"),
        90,
    )
    ids = stream.join()
    # Published after the switch, so version 2's check below never depends on how late the switch fell.
    late_studies = make_studies(plain_stack.folder, first=100, count=6)
    late = Stream(plain_stack, late_studies, per_s=3).start()
    ids += late.join()

    predictions = assert_each_once_on_the_worklist(
        plain_stack, ids, republish_allowed=False, cam_sides={"1": 7, "2": 4}
    )
    versions = [predictions[s][0].model_version for s in ids]
    assert versions[0] == "1" and versions[-1] == "2" and set(versions) == {"1", "2"}
    assert versions == sorted(versions)  # one worker, in order: once switched, never back

    # Nothing mis-scored: each stored prediction is what its own version computes from that image.
    images = {study.study_id: study.data for study in studies + late_studies}
    checked = {"1": 0, "2": 0}
    for study_id in ids:
        version_of = predictions[study_id][0].model_version
        if study_id not in images or checked[version_of] >= 3:
            continue
        stored = predictions[study_id][0].probabilities
        expected = offline_probabilities(settings, version_of, images[study_id])
        assert np.abs(np.array([stored[label] for label in LABELS]) - expected).max() < 1e-4, study_id
        checked[version_of] += 1
    assert checked == {"1": 3, "2": 3}

    # Filed by the scoring version's thresholds: version 2's own, version 1's fixed fallback.
    tiers_v2 = ModelContract.from_mapping({"cxr.input_size": "128", **THRESHOLDS}).tiers(SlaPolicy())
    tiers_v1 = ModelContract(224).tiers(SlaPolicy())
    client = open_redis(settings, decode_responses=True)
    keys = WorklistKeys(settings.redis_key_prefix)
    try:
        for study_id in ids:
            first = predictions[study_id][0]
            tiers = tiers_v2 if first.model_version == "2" else tiers_v1
            assert first.tier is tiers.tier_for(first.priority)
            filed = [t for t in TIERS if client.zscore(keys.unread(t), study_id) is not None]
            assert filed == [first.tier]
            assert (
                json.loads(client.hget(keys.study(study_id), "probabilities") or "{}") == first.probabilities
            )
    finally:
        client.close()
