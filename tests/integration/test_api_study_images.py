"""A study with several images through the API: ``images[]`` in ``GET /studies/{id}``, each image and its own
heatmap, and the study's own image and maps following its most urgent image when a late one arrives.

The studies are written by the inference worker's own writer (``RedisWorklist``: the Lua upsert) on a real
redis-server, the images are real PNGs in the API's image store.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxr_triage.image_store import LocalImageStore
from cxr_triage.sla import SlaPolicy
from inference_worker.worklist import RedisWorklist
from tests.factories import png_bytes
from tests.integration.api_support import KEYS, Api, api_on
from tests.integration.conftest import RedisServer
from tests.study_images import study_entry

pytestmark = pytest.mark.integration


@pytest.fixture()
def api(redis_server: RedisServer, tmp_path: Path) -> Iterator[Api]:
    with api_on(redis_server.url, redis_server.port, tmp_path) as api:
        yield api


def _red_corner(png: bytes) -> str:
    """Where the overlay is red: the top-left or the bottom-right quarter."""
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)
    red = rgb[..., 0] - rgb[..., 2]
    h, w = red.shape
    top_left, bottom_right = red[: h // 2, : w // 2].mean(), red[h // 2 :, w // 2 :].mean()
    return "top-left" if top_left > bottom_right else "bottom-right"


def test_a_study_lists_its_images_and_serves_each_with_its_own_heatmap(api: Api) -> None:
    store = LocalImageStore(api.settings.image_store_dir)
    uris = {
        i: store.put(png_bytes(seed=n, size=96 + 16 * n), suffix=".png")
        for n, i in enumerate(("pa-1", "lat-1", "pa-2"))
    }
    worklist = RedisWorklist(api.redis, KEYS, policy=SlaPolicy())
    received = datetime.now(UTC)
    first = study_entry(
        "s1",
        {"pa-1": 0.3, "lat-1": None},
        views={"lat-1": "LATERAL"},
        uris=uris,
        corners={"pa-1": 0},
        received_at=received,
    )
    worklist.write([first])

    body = api.get("/studies/s1").json()
    assert body["image_id"] == "pa-1" and body["priority"] == 0.3
    assert [(i["image_id"], i["view"], i["scored"], i["primary"]) for i in body["images"]] == [
        ("pa-1", "PA", True, True),
        ("lat-1", "LATERAL", False, False),
    ]
    lateral = body["images"][1]
    assert lateral["probabilities"] is None and lateral["heatmap_available"] is False
    assert lateral["heatmap_url"] is None and lateral["top_findings"] == []
    assert all("image_uri" not in image and "sha256" not in image for image in body["images"])

    # Each image as PNG at its own size; the lateral is shown though the model did not read it.
    for image, side in (("pa-1", 96), ("lat-1", 112)):
        response = api.get(f"/studies/s1/images/{image}/image")
        assert response.status_code == 200 and response.headers["cache-control"] == "private, no-store"
        assert Image.open(io.BytesIO(response.content)).size == (side, side)
    unread = api.get("/studies/s1/images/lat-1/heatmap", params={"finding": "Edema"})
    assert unread.status_code == 404 and "did not read it" in unread.json()["detail"]
    assert api.get("/studies/s1/images/nope/image").status_code == 404
    assert api.get("/studies/ghost/images/pa-1/image").status_code == 404
    assert api.get("/studies/s1/images/pa-1/heatmap", params={"finding": "Nope"}).status_code == 422

    # A late, more urgent PA: the study is now its; each image keeps its own maps.
    late = study_entry(
        "s1",
        {"pa-1": 0.3, "lat-1": None, "pa-2": 0.9},
        views={"lat-1": "LATERAL"},
        uris=uris,
        corners={"pa-1": 0, "pa-2": 1},
        received_at=received,
    )
    worklist.write([late])
    body = api.get("/studies/s1").json()
    assert body["image_id"] == "pa-2" and body["priority"] == 0.9 and body["sla"]["tier"] == "critical"
    assert [(i["image_id"], i["primary"], i["priority"]) for i in body["images"]] == [
        ("pa-1", False, 0.3),
        ("lat-1", False, None),
        ("pa-2", True, 0.9),
    ]
    worklist_ids = [item["study_id"] for item in api.get("/worklist").json()["items"]]
    assert worklist_ids == ["s1"]  # one study, one entry

    def heatmap(path: str) -> bytes:
        response = api.get(path, params={"finding": "Edema"})
        assert response.status_code == 200, response.text
        return bytes(response.content)

    assert _red_corner(heatmap("/studies/s1/images/pa-1/heatmap")) == "top-left"
    assert _red_corner(heatmap("/studies/s1/images/pa-2/heatmap")) == "bottom-right"
    study_map = heatmap(
        "/studies/s1/heatmap"
    )  # the study's own: its most urgent image, with that image's maps
    assert study_map == heatmap("/studies/s1/images/pa-2/heatmap")
    study_image = api.get("/studies/s1/image").content
    assert Image.open(io.BytesIO(study_image)).size == (128, 128)  # pa-2's size, not pa-1's


def test_an_image_of_a_study_needs_a_reader(api: Api) -> None:
    store = LocalImageStore(api.settings.image_store_dir)
    uri = store.put(png_bytes(seed=1), suffix=".png")
    worklist = RedisWorklist(api.redis, KEYS, policy=SlaPolicy())
    worklist.write([study_entry("s2", {"pa-1": 0.5}, uris={"pa-1": uri})])
    assert api.get("/studies/s2/images/pa-1/image", user=None).status_code == 401
    assert api.get("/studies/s2/images/pa-1/image", user="prod").status_code == 403
    assert api.get("/studies/s2/images/pa-1/image").status_code == 200
