"""The page's System view in a real browser: the dashboards' figures from a real Prometheus scraping the API,
and a clear message when Prometheus is down."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import pytest
import redis
from playwright.sync_api import Browser, Page, expect

from cxr_triage.settings import Settings
from cxr_triage.worklist.keys import WorklistKeys
from deploy.prometheus_server import rules_dir
from priority_queue_api.app import create_app
from priority_queue_api.config import ApiPolicy
from tests.integration.api_support import (
    PrometheusPeer,
    api_settings,
    make_users,
    prometheus_on,
    put_study,
    serve,
)
from tests.integration.conftest import REDIS_PASSWORD, _spawn_redis, free_port, wait_for_port
from tests.integration.kafka_support import shared_jars, start_kafka

pytestmark = pytest.mark.integration


@dataclass
class Watched:
    url: str
    tokens: dict[str, str]
    prometheus: PrometheusPeer


@pytest.fixture(scope="module")
def watched(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Watched]:
    home = tmp_path_factory.mktemp("system-view")
    redis_port = free_port()
    redis_proc = _spawn_redis(redis_port, home)
    try:
        wait_for_port(redis_port)
        with start_kafka(home / "kafka-home", shared_jars(tmp_path_factory.getbasetemp())) as kafka:
            keys = WorklistKeys(f"sys{uuid.uuid4().hex[:6]}")
            settings: Settings = api_settings(
                home / "api", redis_port, keys.prefix, kafka_port=kafka.settings.kafka_address.port
            )
            tokens = make_users(settings.home)
            r = redis.Redis(port=redis_port, password=REDIS_PASSWORD, decode_responses=True)
            put_study(r, keys, "old-critical", 0.95, age=timedelta(minutes=12))
            put_study(r, keys, "new-critical", 0.9)
            put_study(r, keys, "routine", 0.1, age=timedelta(minutes=3))
            # Each must know the other: the API's port is chosen first, Prometheus starts scraping it, and
            # the API starts knowing Prometheus's URL.
            api_port = free_port()
            rules = (str(rules_dir() / "*.yml"),)
            with prometheus_on(
                home / "prometheus", targets=(f"127.0.0.1:{api_port}",), rule_files=rules
            ) as prom:
                settings = settings.model_copy(update={"prometheus_url": prom.url})
                app = create_app(settings, policy=ApiPolicy(monitor_interval_s=1.0))
                with serve(app, port=api_port) as url:
                    yield Watched(url, tokens, prom)
    finally:
        redis_proc.terminate()
        redis_proc.wait(timeout=10)


@pytest.fixture()
def page(browser: Browser, watched: Watched) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.set_default_timeout(20_000)
    yield page
    context.close()


def sign_in(page: Page, watched: Watched, who: str) -> None:
    page.goto(f"{watched.url}/?refresh_ms=1000")
    page.get_by_label("Access token").fill(watched.tokens[who])
    page.get_by_role("button", name="Sign in").click()


def test_an_engineer_reads_the_dashboards_figures_and_alerts_from_prometheus(
    page: Page, watched: Watched
) -> None:
    sign_in(page, watched, "eng")
    page.get_by_role("button", name="System").click()
    view = page.locator("#system-view")
    expect(view.get_by_role("heading", name="System")).to_be_visible()
    expect(view.get_by_role("heading", name="cxr-triage: operations")).to_be_visible()
    expect(view.get_by_role("heading", name="cxr-triage: model")).to_be_visible()

    # The worklist as the API's monitor measured it, scraped by Prometheus and evaluated for the page.
    unread = view.locator("table.panel", has=page.locator("caption", has_text="Unread studies by tier"))
    # Prometheus scrapes every second and the page refreshes every second: the first figures take a few.
    expect(unread.locator("tr", has_text="tier=critical")).to_contain_text("2", timeout=60_000)
    expect(unread.locator("tr", has_text="tier=routine")).to_contain_text("1")
    oldest = view.locator(
        "table.panel", has=page.locator("caption", has_text=re.compile("^Oldest unread study by tier$"))
    )
    expect(oldest.locator("tr", has_text="tier=critical")).to_contain_text(re.compile(r"12m \d+s"))
    share = view.locator("table.panel", has=page.locator("caption", has_text="as a share of its SLA"))
    expect(share.locator("tr", has_text="tier=critical")).to_contain_text(
        re.compile(r"4[01]\.\d %")
    )  # 12 of 30 min
    up = view.locator("table.panel", has=page.locator("caption", has_text="Components up"))
    expect(up.locator("tr", has_text="job=cxr-api")).to_contain_text("1")
    # A service this Prometheus does not scrape has no data, and says so.
    scored = view.locator("table.panel", has=page.locator("caption", has_text="Studies scored per minute"))
    expect(scored).to_contain_text("no data yet")
    expect(page.locator("#system-alerts")).to_contain_text("none pending or firing")

    page.keyboard.press("Escape")
    expect(page.locator("#list-view")).to_be_visible()


def test_a_radiologist_sees_why_when_prometheus_is_down(page: Page, watched: Watched) -> None:
    sign_in(page, watched, "rad")
    page.get_by_role("button", name="System").click()
    expect(page.locator("#system-view table.panel").first).to_be_visible(timeout=60_000)
    watched.prometheus.stop()
    expect(page.locator("#status")).to_contain_text("System figures unavailable: Prometheus did not answer")
    expect(page.locator("#status")).to_contain_text("cxr-triage up --observability")


def test_a_producer_has_no_system_view(page: Page, watched: Watched) -> None:
    sign_in(page, watched, "prod")
    expect(page.locator("#upload-form")).to_be_visible()
    expect(page.get_by_role("button", name="System")).to_be_hidden()
