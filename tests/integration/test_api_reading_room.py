"""What the reading room's viewer asks the API for, against a real redis-server: each image at its full
stored resolution (rendered once, then read from the server's cache under ``<home>/derived``), an activation
map alone as a transparent layer of the image's size, and the worklist filtered by a finding."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxr_triage.image_store import LocalImageStore
from cxr_triage.labels import LABELS
from tests.dicom_files import chest_pixels, radiograph, to_bytes
from tests.integration.api_support import FAST, KEYS, Api, api_on, put_study
from tests.integration.conftest import RedisServer

pytestmark = pytest.mark.integration


@pytest.fixture()
def api(redis_server: RedisServer, tmp_path: Path) -> Iterator[Api]:
    with api_on(redis_server.url, redis_server.port, tmp_path) as api:
        yield api


def _png(width: int, height: int, seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def _image(content: bytes) -> Image.Image:
    return Image.open(io.BytesIO(content))


def _cached_files(api: Api) -> list[Path]:
    return sorted(p for p in (api.settings.home / "derived").rglob("*") if p.is_file())


def test_the_full_image_is_the_stored_size_rendered_once_then_read_from_the_cache(api: Api) -> None:
    store = LocalImageStore(api.settings.image_store_dir)
    original = _png(1500, 1200)
    put_study(api.redis, KEYS, "big-study", 0.7, image_uri=store.put(original, suffix=".png"))

    first = api.get("/studies/big-study/full")
    assert first.status_code == 200, first.text
    assert first.headers["content-type"] == "image/png"
    assert (
        first.headers["cache-control"] == "private, no-store"
    )  # the cache is the server's, not the browser's
    assert first.headers["x-render-cache"] == "miss"
    shown = _image(first.content)
    assert shown.size == (1500, 1200) and shown.mode == "L"
    assert np.array_equal(np.asarray(shown), np.asarray(_image(original)))  # the stored pixels, unchanged

    files = _cached_files(api)
    assert len(files) == 1
    cached = files[0]
    assert cached.read_bytes() == first.content
    assert "big-study" not in str(cached)  # named by hashes: no study (nor patient) in a path
    assert all(len(part) in (2, 68) for part in cached.relative_to(api.settings.home / "derived").parts)

    second = api.get("/studies/big-study/full")
    assert second.headers["x-render-cache"] == "hit" and second.content == first.content
    # Proof that the second answer is the cache file's bytes: plant other bytes there and get them back.
    planted = _png(1500, 1200, seed=9)
    cached.write_bytes(planted)
    assert api.get("/studies/big-study/full").content == planted

    # The sized rendering is cached under its own parameters; the default is the server's 1024 px.
    sized = api.get("/studies/big-study/image")
    assert sized.headers["x-render-cache"] == "miss" and _image(sized.content).size == (1024, 819)
    assert api.get("/studies/big-study/image").headers["x-render-cache"] == "hit"
    assert _image(api.get("/studies/big-study/image?max_side=512").content).size == (512, 410)
    assert len(_cached_files(api)) == 3


def test_a_small_image_is_never_upscaled_and_dicom_is_rendered_at_its_own_size(api: Api) -> None:
    store = LocalImageStore(api.settings.image_store_dir)
    put_study(api.redis, KEYS, "small", 0.2, image_uri=store.put(_png(320, 240), suffix=".png"))
    assert _image(api.get("/studies/small/full").content).size == (320, 240)
    assert _image(api.get("/studies/small/image?max_side=4096").content).size == (320, 240)

    dicom = to_bytes(radiograph(chest_pixels(size=192)))
    put_study(
        api.redis,
        KEYS,
        "dicom",
        0.3,
        image_uri=store.put(dicom, suffix=".dcm"),
        content_type="application/dicom",
    )
    full = api.get("/studies/dicom/full")
    assert full.status_code == 200 and _image(full.content).size == (192, 192)


def test_a_missing_or_corrupt_original_is_a_clear_error(api: Api) -> None:
    store = LocalImageStore(api.settings.image_store_dir)
    gone = store.put(_png(200, 200, seed=3), suffix=".png")
    put_study(api.redis, KEYS, "gone", 0.5, image_uri=gone)
    Path(gone.removeprefix("file://")).unlink()
    missing = api.get("/studies/gone/full")
    assert missing.status_code == 404
    assert "no longer in the image store" in missing.json()["detail"]

    put_study(api.redis, KEYS, "corrupt", 0.5, image_uri=store.put(b"\x89PNG\r\n\x1a\nbroken", suffix=".png"))
    corrupt = api.get("/studies/corrupt/full")
    assert corrupt.status_code == 422 and "cannot be decoded" in corrupt.json()["detail"]
    assert api.get("/studies/corrupt/cam", params={"finding": "Edema"}).status_code == 404  # no maps either
    assert api.get("/studies/nobody/full").status_code == 404
    assert api.get("/studies/gone/images/nope/full").status_code == 404
    assert _cached_files(api) == []  # nothing is cached for a failure


def test_the_activation_map_alone_is_a_transparent_layer_of_the_image_size(api: Api) -> None:
    store = LocalImageStore(api.settings.image_store_dir)
    put_study(api.redis, KEYS, "mapped", 0.9, image_uri=store.put(_png(600, 400), suffix=".png"))
    cams = np.zeros((len(LABELS), 8, 8), dtype=np.float16)
    cams[LABELS.index("Pneumothorax"), :3, :3] = 4.0  # hot in the top-left corner only
    api.redis.hset(KEYS.study("mapped"), mapping={"cam_h": 8, "cam_w": 8})
    api.redis.set(KEYS.cam("mapped"), cams.tobytes())

    response = api.get("/studies/mapped/cam", params={"finding": "Pneumothorax"})
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "private, no-store"
    assert response.headers["x-render-cache"] == "miss"
    layer = _image(response.content)
    assert layer.mode == "RGBA" and layer.size == (600, 400)
    rgba = np.asarray(layer)
    assert rgba[10, 10, 3] == 255 and rgba[10, 10, 0] > 200  # strong and red where the map is
    assert rgba[390, 590, 3] == 0  # transparent where it is not: the image beneath shows unchanged
    again = api.get("/studies/mapped/cam", params={"finding": "Pneumothorax"})
    assert again.headers["x-render-cache"] == "hit" and again.content == response.content

    # Another finding's map is another layer (all zero here: nothing to show, fully transparent).
    edema = np.asarray(_image(api.get("/studies/mapped/cam", params={"finding": "Edema"}).content))
    assert edema[..., 3].max() == 0
    bad = api.get("/studies/mapped/cam", params={"finding": "Nope"})
    assert bad.status_code == 422 and "14 labels" in bad.json()["detail"]
    assert api.get("/studies/mapped/cam").status_code == 422  # the finding is required
    # The blended rendering stays for older clients.
    blended = api.get("/studies/mapped/heatmap", params={"finding": "Pneumothorax"})
    assert blended.status_code == 200 and _image(blended.content).mode == "RGB"
    assert api.get("/studies/mapped/cam", user="prod", params={"finding": "Edema"}).status_code == 403


def test_the_worklist_filters_by_a_finding_s_probability(api: Api) -> None:
    base = {label: 0.1 for label in LABELS}
    put_study(api.redis, KEYS, "edema-high", 0.9, probabilities=base | {"Edema": 0.9})
    put_study(
        api.redis, KEYS, "edema-mid", 0.6, age=timedelta(minutes=1), probabilities=base | {"Edema": 0.55}
    )
    put_study(api.redis, KEYS, "edema-edge", 0.3, probabilities=base | {"Edema": 0.5})
    put_study(api.redis, KEYS, "no-edema", 0.95, probabilities=base | {"Pneumothorax": 0.95})

    body = api.get("/worklist", params={"finding": "Edema"}).json()
    assert [i["study_id"] for i in body["items"]] == ["edema-high", "edema-mid", "edema-edge"]
    assert body["total"] == 3  # p >= 0.5 (the same threshold that pre-fills the verdict form)
    strict = api.get("/worklist", params={"finding": "Edema", "min_probability": 0.8}).json()
    assert (strict["total"], [i["study_id"] for i in strict["items"]]) == (1, ["edema-high"])
    paged = api.get("/worklist", params={"finding": "Edema", "limit": 1, "offset": 1}).json()
    assert (paged["total"], [i["study_id"] for i in paged["items"]]) == (3, ["edema-mid"])
    both = api.get("/worklist", params={"finding": "Edema", "tier": "urgent"}).json()
    assert [i["study_id"] for i in both["items"]] == ["edema-mid"]
    assert api.get("/worklist", params={"finding": "Edema", "min_priority": 0.5}).json()["total"] == 2

    claimed = api.post("/worklist/claim").json()
    assert claimed["study_id"] == "no-edema"
    api.post("/worklist/claim")  # edema-high, leased to rad: still listed, with its reader
    leased = api.get("/worklist", params={"finding": "Edema", "status": "claimed"}).json()
    assert [(i["study_id"], i["lease"]["radiologist"]) for i in leased["items"]] == [("edema-high", "rad")]
    pneumo = api.get("/worklist", params={"finding": "Pneumothorax"}).json()
    assert [i["study_id"] for i in pneumo["items"]] == ["no-edema"]

    bad = api.get("/worklist", params={"finding": "Oedema"})
    assert bad.status_code == 422 and "14 labels" in bad.json()["detail"]
    assert api.get("/worklist", params={"finding": "Edema", "min_probability": 1.5}).status_code == 422


def test_the_rendering_cache_stays_under_its_cap_least_recently_used_first(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    policy = FAST.model_copy(update={"render_cache_max_mb": 1, "render_cache_trim_interval_s": 0.2})
    with api_on(redis_server.url, redis_server.port, tmp_path, policy=policy) as api:
        store = LocalImageStore(api.settings.image_store_dir)
        for n in range(3):  # about 0.36 MB each: two fit under the trim's 0.9 MB, three are over 1 MB
            put_study(
                api.redis, KEYS, f"cap-{n}", 0.5, image_uri=store.put(_png(600, 600, seed=n), suffix=".png")
            )
        sizes = []
        for n in range(3):
            shown = api.get(f"/studies/cap-{n}/full")
            assert shown.headers["x-render-cache"] == "miss"
            sizes.append(len(shown.content))
            time.sleep(0.05)  # distinct mtimes
        assert 2 * max(sizes) <= 0.9 * MB and sum(sizes) > MB

        metrics = _wait_for_eviction(api)
        assert 0 < _metric(metrics, "cxr_api_render_cache_bytes") <= MB
        assert sum(p.stat().st_size for p in _cached_files(api)) <= MB
        # The oldest went; the two newer ones are still served from the cache.
        assert api.get("/studies/cap-1/full").headers["x-render-cache"] == "hit"
        assert api.get("/studies/cap-2/full").headers["x-render-cache"] == "hit"
        again = api.get("/studies/cap-0/full")
        assert again.headers["x-render-cache"] == "miss" and len(again.content) == sizes[0]


MB = 1024 * 1024


def _metric(text: str, name: str) -> float:
    values = [float(line.split()[-1]) for line in text.splitlines() if line.startswith(f"{name} ")]
    assert values, f"{name} not in /metrics"
    return values[0]


def _wait_for_eviction(api: Api) -> str:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        text = api.client.get("/metrics").text
        if _metric(text, "cxr_api_render_cache_evicted_total") >= 1:
            return text
        time.sleep(0.1)
    raise AssertionError("the rendering cache was never trimmed")
