"""The worklist API against a real redis-server: auth and roles, SLA order, claims, leases, images, faults.

Kafka is pointed at a port where nothing listens, so everything here must work (or fail cleanly) without it;
the tests that need a broker are in ``test_api_kafka_verdicts.py`` and ``test_api_kafka_inputs.py``.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis
from PIL import Image

from cxr_triage.image_store import LocalImageStore
from cxr_triage.labels import LABELS
from cxr_triage.settings import Settings
from cxr_triage.sla import Tier
from cxr_triage.worklist.keys import WorklistKeys
from priority_queue_api.app import create_app
from priority_queue_api.users import Role, add_user, users_file
from tests.factories import png_bytes
from tests.integration.api_support import FAST, KEYS, Api, api_on, api_settings, put_study, serve
from tests.integration.conftest import RedisServer


@pytest.fixture()
def api(redis_server: RedisServer, tmp_path: Path) -> Iterator[Api]:
    with api_on(redis_server.url, redis_server.port, tmp_path) as api:
        yield api


def test_every_data_endpoint_needs_a_valid_token_and_the_right_role(api: Api) -> None:
    put_study(api.redis, KEYS, "s1", 0.5)
    for path in ("/worklist", "/studies/s1", "/studies/s1/image", "/me"):
        missing = api.get(path, user=None)
        assert missing.status_code == 401, path
        assert "bearer token" in missing.json()["detail"]
        assert missing.headers["www-authenticate"] == "Bearer"
        wrong = api.client.get(path, headers={"Authorization": "Bearer not-a-token"})
        assert wrong.status_code == 401 and "invalid" in wrong.json()["detail"]
    assert api.client.get("/worklist", headers={"Authorization": "Basic cmFkOnB3"}).status_code == 401

    assert api.get("/worklist", user="prod").status_code == 403
    assert "may not" in api.get("/studies/s1", user="prod").json()["detail"]
    assert api.post("/worklist/claim", user="eng").status_code == 403
    assert api.post("/studies/s1/verdict", user="eng", json={}).status_code == 403
    assert api.post("/studies", user="rad", content=b"x").status_code == 403
    assert api.get("/worklist", user="eng").status_code == 200
    assert api.get("/me", user="prod").json() == {"name": "prod", "role": "producer"}
    # health, metrics and the page need no token
    for path in ("/healthz", "/metrics", "/", "/static/app.js", "/openapi.json"):
        assert api.client.get(path).status_code == 200, path


def test_worklist_is_ordered_by_effective_priority_with_sla_times(api: Api) -> None:
    put_study(api.redis, KEYS, "fresh-critical", 0.9)
    put_study(api.redis, KEYS, "old-routine", 0.3, age=timedelta(hours=23, minutes=54))
    put_study(api.redis, KEYS, "overdue-urgent", 0.6, age=timedelta(hours=2, minutes=30))
    put_study(api.redis, KEYS, "new-routine", 0.1)

    body = api.get("/worklist", params={"limit": 3}).json()
    assert body["total"] == 4 and body["limit"] == 3
    # Every tier ages over the 25-minute horizon: 0.3 + 57.4, 0.6 + 6.0, 0.9, then 0.1.
    assert [item["study_id"] for item in body["items"]] == ["old-routine", "overdue-urgent", "fresh-critical"]
    urgent = body["items"][1]
    assert list(urgent["probabilities"]) == list(LABELS)
    assert urgent["status"] == "unclaimed" and urgent["lease"] is None
    sla = urgent["sla"]
    assert sla["tier"] == "urgent" and sla["max_wait_s"] == 7200  # the promise; the aging is the horizon's
    assert sla["waited_s"] == pytest.approx(9000, abs=30)
    assert sla["time_left_s"] == pytest.approx(-1800, abs=30) and sla["overdue"] is True
    assert sla["effective_priority"] == pytest.approx(0.6 + 9000 / 1500, abs=0.01)
    assert [f["label"] for f in urgent["top_findings"]] == list(LABELS[1:4])
    assert body["items"][2]["sla"]["overdue"] is False

    rest = api.get("/worklist", params={"limit": 3, "offset": 3}).json()
    assert [item["study_id"] for item in rest["items"]] == ["new-routine"]

    critical = api.get("/worklist", params=[("tier", "critical"), ("tier", "urgent")]).json()
    assert [item["study_id"] for item in critical["items"]] == ["overdue-urgent", "fresh-critical"]
    assert api.get("/worklist", params={"min_priority": 0.5}).json()["total"] == 2
    assert api.get("/worklist", params={"status": "claimed"}).json()["total"] == 0
    assert api.get("/worklist", params={"limit": 0}).status_code == 422
    bad = api.get("/worklist", params={"tier": "whenever"})
    assert bad.status_code == 422 and "tier" in bad.json()["detail"]


def test_the_tier_shown_is_the_one_stored_with_the_study(api: Api) -> None:
    # A strict model filed a 0.3 as critical; a study written before hashes kept their tier has none.
    put_study(api.redis, KEYS, "strict", 0.3, age=timedelta(minutes=10), tier=Tier.CRITICAL)
    put_study(api.redis, KEYS, "old-hash", 0.6)
    api.redis.hdel(KEYS.study("old-hash"), "tier")

    items = {item["study_id"]: item for item in api.get("/worklist").json()["items"]}
    strict = items["strict"]["sla"]
    assert strict["tier"] == "critical" and strict["max_wait_s"] == 1800
    assert strict["effective_priority"] == pytest.approx(0.3 + 600 / 1500, abs=0.01)  # the 25-min horizon
    assert api.get("/studies/strict").json()["sla"]["tier"] == "critical"
    assert api.get("/studies/old-hash").json()["sla"]["tier"] == "urgent"  # the fallback thresholds
    above = api.get("/worklist", params={"min_priority": 0.5}).json()
    assert (above["total"], [i["study_id"] for i in above["items"]]) == (1, ["old-hash"])

    claimed = api.post("/worklist/claim").json()
    assert claimed["study_id"] == "strict" and claimed["sla"]["tier"] == "critical"


def test_claim_release_and_lease_state(api: Api) -> None:
    put_study(api.redis, KEYS, "low", 0.2)
    put_study(api.redis, KEYS, "high", 0.95)

    claimed = api.post("/worklist/claim", json={"lease_s": 120})
    assert claimed.status_code == 200
    study = claimed.json()
    assert study["study_id"] == "high" and study["status"] == "claimed"
    assert study["lease"]["radiologist"] == "rad"
    assert study["lease"]["expires_in_s"] == pytest.approx(120, abs=5)

    listed = api.get("/worklist").json()["items"]
    assert [(i["study_id"], i["status"]) for i in listed] == [("high", "claimed"), ("low", "unclaimed")]
    assert api.get("/worklist", params={"status": "unclaimed"}).json()["total"] == 1

    assert api.post("/worklist/claim", user="rad2").json()["study_id"] == "low"
    assert api.post("/worklist/claim", user="rad2").status_code == 204  # nothing left

    conflict = api.post("/studies/high/release", user="rad2")
    assert conflict.status_code == 409 and "claimed by rad" in conflict.json()["detail"]
    released = api.post("/studies/high/release")
    assert released.status_code == 200 and released.json()["status"] == "unclaimed"
    assert api.post("/studies/high/release").status_code == 409  # not claimed any more
    assert api.post("/studies/ghost/release").status_code == 404

    assert api.post("/studies/low/release", user="eng").json()["status"] == "unclaimed"  # admin override
    assert api.post("/worklist/claim", json={"lease_s": 1}).status_code == 422  # below the minimum lease
    assert api.post("/worklist/claim", json={"lease": 60}).status_code == 422  # unknown field


def test_expired_lease_puts_the_study_back(api: Api) -> None:
    put_study(api.redis, KEYS, "s", 0.7)
    assert api.post("/worklist/claim", json={"lease_s": 10}).json()["study_id"] == "s"
    # Age the lease instead of sleeping: move its expiry into the past.
    api.redis.zadd(KEYS.claims, {"s": time.time() - 1})
    api.redis.hset(KEYS.lease("s"), "expires_at", time.time() - 1)
    assert api.get("/studies/s").json()["status"] == "unclaimed"
    again = api.post("/worklist/claim", user="rad2")
    assert again.json()["study_id"] == "s" and again.json()["lease"]["radiologist"] == "rad2"


def test_study_detail_and_clear_errors(api: Api) -> None:
    put_study(api.redis, KEYS, "s1", 0.4, age=timedelta(minutes=10))
    body = api.get("/studies/s1").json()
    assert body["priority"] == pytest.approx(0.4) and body["status"] == "unclaimed"
    assert body["scoring_latency_s"] == pytest.approx(1.25)
    assert body["sla"]["tier"] == "routine" and body["heatmap_available"] is False
    assert body["verdicts"] == [] and body["read_at"] is None and body["content_type"] == "image/png"

    missing = api.get("/studies/nope")
    assert missing.status_code == 404 and "not known" in missing.json()["detail"]
    assert api.get("/studies/bad$id").status_code == 422


def _store_png(settings: Settings, size: int = 200) -> str:
    return LocalImageStore(settings.image_store_dir).put(png_bytes(seed=5, size=size), suffix=".png")


def test_image_is_served_as_png_and_missing_images_are_404(api: Api, tmp_path: Path) -> None:
    put_study(api.redis, KEYS, "s1", 0.5, image_uri=_store_png(api.settings))
    response = api.get("/studies/s1/image")
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert response.headers["cache-control"] == "private, no-store"
    assert Image.open(io.BytesIO(response.content)).size == (200, 200)
    small = api.get("/studies/s1/image", params={"max_side": 64})
    assert Image.open(io.BytesIO(small.content)).size == (64, 64)

    gone = api.settings.image_store_dir / "ab" / "cd" / ("abcd" + "0" * 60 + ".png")
    put_study(api.redis, KEYS, "s2", 0.5, image_uri=gone.as_uri())
    assert api.get("/studies/s2/image").status_code == 404
    outside = tmp_path / "elsewhere.png"
    outside.write_bytes(png_bytes())
    put_study(api.redis, KEYS, "s3", 0.5, image_uri=outside.as_uri())
    refused = api.get("/studies/s3/image")
    assert refused.status_code == 404 and "not served" in refused.json()["detail"]
    assert api.get("/studies/ghost/image").status_code == 404


def test_heatmap_overlays_the_stored_activation_map(api: Api) -> None:
    put_study(api.redis, KEYS, "s1", 0.5, image_uri=_store_png(api.settings))
    assert api.get("/studies/s1/heatmap", params={"finding": "Edema"}).status_code == 404

    h, w = 7, 7
    cams = np.zeros((len(LABELS), h, w), dtype=np.float16)
    cams[LABELS.index("Edema"), 0:2, 0:2] = 5.0  # hot in the top-left corner only
    api.redis.hset(KEYS.study("s1"), mapping={"cam_h": h, "cam_w": w})
    api.redis.set(KEYS.cam("s1"), cams.tobytes())
    assert api.get("/studies/s1").json()["heatmap_available"] is True

    response = api.get("/studies/s1/heatmap", params={"finding": "Edema"})
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    rgb = np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"), dtype=np.int16)
    assert rgb.shape == (200, 200, 3)
    corner, far = rgb[5, 5], rgb[190, 190]
    assert corner[0] - corner[2] > 60  # red where the map is hot
    assert abs(int(far[0]) - int(far[2])) < 10  # grey where it is cold

    flat = api.get("/studies/s1/heatmap", params={"finding": "Fracture"})  # all-zero map: plain image
    assert flat.status_code == 200
    assert api.get("/studies/s1/heatmap", params={"finding": "Broken Heart"}).status_code == 422
    assert api.get("/studies/s1/heatmap").status_code == 422

    api.redis.set(KEYS.cam("s1"), b"\x00" * 10)  # truncated blob
    broken = api.get("/studies/s1/heatmap", params={"finding": "Edema"})
    assert broken.status_code == 404 and "unusable" in broken.json()["detail"]


def test_verdict_errors_before_kafka_and_kafka_down_changes_nothing(api: Api) -> None:
    labels = {label: 0 for label in LABELS}
    unknown = api.post("/studies/ghost/verdict", json={"labels": labels})
    assert unknown.status_code == 404
    put_study(api.redis, KEYS, "s1", 0.9)
    assert api.post("/worklist/claim", user="rad2").json()["study_id"] == "s1"
    taken = api.post("/studies/s1/verdict", json={"labels": labels})
    assert taken.status_code == 409 and "claimed by rad2" in taken.json()["detail"]

    invalid = api.post("/studies/s1/verdict", user="rad2", json={"labels": {**labels, "Edema": 2}})
    assert invalid.status_code == 422 and "Edema" in invalid.json()["detail"]
    partial = api.post("/studies/s1/verdict", user="rad2", json={"labels": {"Edema": 1}})
    assert partial.status_code == 422 and "missing" in partial.json()["detail"]

    # Kafka is unreachable: the verdict is refused with 503 and the study is still rad2's, unread.
    down = api.post("/studies/s1/verdict", user="rad2", json={"labels": labels})
    assert down.status_code == 503 and "Kafka" in down.json()["detail"]
    study = api.get("/studies/s1").json()
    assert study["status"] == "claimed" and study["verdicts"] == []
    assert api.redis.zcard(KEYS.read) == 0

    put_study(api.redis, KEYS, "s2", 0.1)  # an unclaimed study reserved for the verdict is given back
    assert api.post("/studies/s2/verdict", json={"labels": labels}).status_code == 503
    assert api.get("/studies/s2").json()["status"] == "unclaimed"


def test_redis_down_gives_503_with_a_message_and_recovers(api: Api, redis_server: RedisServer) -> None:
    assert api.client.get("/healthz").json() == {"status": "ok", "redis": "ok"}
    redis_server.stop()
    for call in (
        lambda: api.get("/worklist"),
        lambda: api.get("/studies/s1"),
        lambda: api.post("/worklist/claim"),
        lambda: api.post("/studies/s1/verdict", json={"labels": {label: 0 for label in LABELS}}),
    ):
        down = call()
        assert down.status_code == 503
        assert "Redis" in down.json()["detail"]
    assert api.client.get("/healthz").status_code == 503

    redis_server.start()
    assert api.get("/worklist").status_code == 200
    assert api.client.get("/healthz").status_code == 200


def test_metrics_count_requests_by_route(api: Api) -> None:
    api.get("/worklist")
    api.get("/studies/unknown-study")
    text = api.client.get("/metrics").text
    assert 'cxr_api_requests_total{method="GET",route="/worklist",status="200"} 1.0' in text
    assert 'route="/studies/{study_id}",status="404"' in text
    assert "unknown-study" not in text


def test_users_file_changes_apply_without_restart(api: Api) -> None:
    path = users_file(api.settings.home)
    late = add_user(path, name="late", role=Role.ENGINEER).token
    assert api.client.get("/me", headers={"Authorization": f"Bearer {late}"}).status_code == 200

    rotated = add_user(path, name="late", role=Role.ENGINEER, rotate=True).token
    assert api.client.get("/me", headers={"Authorization": f"Bearer {late}"}).status_code == 401
    assert api.client.get("/me", headers={"Authorization": f"Bearer {rotated}"}).status_code == 200

    path.write_text("{ not json")  # a botched manual edit keeps the last good users in force
    assert api.client.get("/me", headers={"Authorization": f"Bearer {rotated}"}).status_code == 200


def test_eight_clients_claiming_over_http_get_100_distinct_studies(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    keys = WorklistKeys("race-http")
    settings = api_settings(tmp_path, redis_server.port, keys.prefix)
    path = users_file(tmp_path)
    tokens = [add_user(path, name=f"r{n}", role=Role.RADIOLOGIST).token for n in range(8)]
    r = redis.Redis.from_url(redis_server.url, decode_responses=True)
    for i in range(100):
        put_study(r, keys, f"s{i:03d}", (i % 20) / 20, age=timedelta(seconds=i))

    claims: list[list[str]] = [[] for _ in range(8)]
    barrier = threading.Barrier(8)
    errors: list[str] = []

    def client(n: int, base: str) -> None:
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {tokens[n]}"}) as http:
            barrier.wait()
            while True:
                response = http.post("/worklist/claim", timeout=30)
                if response.status_code == 204:
                    return
                if response.status_code != 200:
                    errors.append(f"{response.status_code} {response.text}")
                    return
                claims[n].append(response.json()["study_id"])

    with serve(create_app(settings, policy=FAST)) as base:
        threads = [threading.Thread(target=client, args=(n, base)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    assert not errors
    every = [s for mine in claims for s in mine]
    assert len(every) == 100, "double or missing claims"
    assert set(every) == {f"s{i:03d}" for i in range(100)}
    assert sum(1 for mine in claims if mine) > 1
