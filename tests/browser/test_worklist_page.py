"""End to end in a real browser: sign in, claim the top study, agree or disagree, see the verdict on Kafka."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from playwright.sync_api import Browser, Page, Route, expect

from cxr_triage import topics
from cxr_triage.image_store import LocalImageStore
from cxr_triage.labels import LABELS
from cxr_triage.sla import SlaPolicy
from inference_worker.worklist import RedisWorklist
from tests.browser.site_support import Site, running_site, verdict_of
from tests.dicom_files import PLANTED, chest_pixels, radiograph, to_bytes
from tests.factories import png_bytes
from tests.integration.api_support import put_study
from tests.study_images import study_entry

pytestmark = pytest.mark.integration

DICOM_STUDY = "2.25.424242"
UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    with running_site(tmp_path_factory, "browser") as site:
        r, keys, store = site.redis, site.keys, site.store
        probabilities = {label: 0.1 for label in LABELS} | {"Pneumothorax": 0.92, "No Finding": 0.05}
        put_study(
            r,
            keys,
            "top-critical",
            0.92,
            age=timedelta(minutes=5),
            probabilities=probabilities,
            image_uri=store.put(png_bytes(seed=1, size=320), suffix=".png"),
        )
        put_study(r, keys, "urgent-one", 0.6, image_uri=store.put(png_bytes(seed=2, size=320), suffix=".png"))
        put_study(
            r, keys, "routine-one", 0.2, image_uri=store.put(png_bytes(seed=3, size=320), suffix=".png")
        )
        dicom = to_bytes(radiograph(chest_pixels(size=128)))
        put_study(
            r,
            keys,
            DICOM_STUDY,
            0.05,
            image_uri=store.put(dicom, suffix=".dcm"),
            content_type="application/dicom",
        )
        cams = np.zeros((len(LABELS), 8, 8), dtype=np.float16)
        cams[LABELS.index("Pneumothorax"), :3, :3] = 4.0
        r.hset(keys.study("top-critical"), mapping={"cam_h": 8, "cam_w": 8})
        r.set(keys.cam("top-critical"), cams.tobytes())
        yield site


@pytest.fixture()
def page(browser: Browser, site: Site) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(15_000)
    yield page
    context.close()


def _rows(page: Page) -> Any:
    return page.locator("#worklist tbody tr")


def test_sign_in_claim_agree_and_see_the_verdict_on_kafka(page: Page, site: Site, tmp_path: Path) -> None:
    page.goto(f"{site.url}/?refresh_ms=1000")
    page.fill("#token", "wrong-token")
    page.keyboard.press("Enter")
    expect(page.locator("#status")).to_contain_text("not accepted")

    page.fill("#token", site.tokens["rad"])
    page.keyboard.press("Enter")
    expect(page.locator("#who")).to_have_text("rad (radiologist)")
    expect(_rows(page)).to_have_count(4)
    first = _rows(page).first
    expect(first).to_have_attribute("data-study", "top-critical")
    expect(first).to_have_class("tier-critical")
    expect(_rows(page).nth(1)).to_have_class("tier-urgent")
    expect(first).to_contain_text("Pneumothorax 0.92")

    page.keyboard.press("c")  # claim the top study, from the keyboard
    expect(page.locator("#study-view")).to_be_visible()
    expect(page.locator("#study-title")).to_contain_text("top-critical")
    expect(page.locator("#top-findings li").first).to_have_text("Pneumothorax: 0.92")
    page.wait_for_function("document.querySelector('#study-image').naturalWidth === 320")
    plain_src = page.get_attribute("#study-image", "src")
    expect(page.locator("#present-9")).to_be_checked()  # Pneumothorax pre-filled from the model
    expect(page.locator("#present-0")).not_to_be_checked()

    page.locator("#heatmap-finding").select_option("Pneumothorax")
    page.locator("body").press("h")
    # The map is a layer of its own, at the image's size, over the unchanged image.
    expect(page.locator("#heatmap-layer")).to_be_visible()
    page.wait_for_function("document.querySelector('#heatmap-layer').naturalWidth === 320")
    assert page.get_attribute("#study-image", "src") == plain_src
    page.screenshot(path=str(tmp_path / "study.png"))

    page.click("#agree")
    expect(page.locator("#list-view")).to_be_visible()
    expect(page.locator("#status")).to_contain_text("Verdict saved (verdict")
    expect(_rows(page)).to_have_count(3)
    expect(page.locator('#worklist tr[data-study="top-critical"]')).to_have_count(0)

    event = verdict_of(site, "top-critical")
    assert event["radiologist"] == "rad" and event["agreed_with_model"] is True
    assert event["labels"]["Pneumothorax"] == 1 and sum(event["labels"].values()) == 1
    assert event["model_version"] == "1" and event["claimed_at"] is not None
    assert UUID_RE.fullmatch(event["idempotency_key"]), event["idempotency_key"]  # the page's own key


def test_disagree_path_with_the_keyboard(page: Page, site: Site) -> None:
    page.goto(site.url)
    page.fill("#token", site.tokens["rad2"])
    page.keyboard.press("Enter")
    expect(_rows(page).first).to_be_focused()
    first_id = _rows(page).first.get_attribute("data-study")
    page.keyboard.press("ArrowDown")
    second = _rows(page).nth(1)
    expect(second).to_be_focused()
    second_id = second.get_attribute("data-study")
    assert second_id and second_id != first_id
    page.keyboard.press("Enter")  # open it without claiming: the verdict reserves it
    expect(page.locator("#study-title")).to_contain_text(second_id[:16])

    page.check("#present-2")  # Cardiomegaly, which the model did not call
    page.check("#uncertain-2")
    page.fill("#note", "borderline heart size")
    page.click("#submit-verdict")
    expect(page.locator("#status")).to_contain_text("Verdict saved")
    expect(page.locator(f'#worklist tr[data-study="{second_id}"]')).to_have_count(0)

    event = verdict_of(site, second_id)
    assert event["radiologist"] == "rad2" and event["agreed_with_model"] is False
    assert event["labels"]["Cardiomegaly"] == 1 and event["uncertain"] == ["Cardiomegaly"]
    assert event["note"] == "borderline heart size"


def test_engineer_sees_the_list_read_only(page: Page, site: Site) -> None:
    page.goto(site.url)
    page.fill("#token", site.tokens["eng"])
    page.click("#signin")
    expect(page.locator("#who")).to_have_text("eng (engineer)")
    expect(_rows(page).first).to_be_visible()
    expect(page.locator("#claim")).to_be_hidden()
    _rows(page).first.click()
    expect(page.locator("#study-view")).to_be_visible()
    expect(page.locator("#verdict-form")).to_be_hidden()


def test_a_lost_answer_is_retried_by_the_page_with_the_same_key(page: Page, site: Site) -> None:
    put_study(site.redis, site.keys, "lost-answer", 0.99, age=timedelta(minutes=20))
    keys_sent: list[str | None] = []

    def lose_the_first_answer(route: Route) -> None:
        keys_sent.append(route.request.headers.get("idempotency-key"))
        if len(keys_sent) == 1:
            route.fetch()  # the server records the verdict and publishes it...
            route.abort("connectionreset")  # ...but its answer never reaches the page
        else:
            route.continue_()

    page.route("**/studies/*/verdict", lose_the_first_answer)
    page.goto(site.url)
    page.fill("#token", site.tokens["rad"])
    page.keyboard.press("Enter")
    expect(_rows(page).first).to_have_attribute("data-study", "lost-answer")
    page.keyboard.press("c")
    expect(page.locator("#study-title")).to_contain_text("lost-answer")
    page.click("#submit-verdict")
    expect(page.locator("#status")).to_contain_text("Verdict saved (verdict, already recorded)")

    assert len(keys_sent) == 2 and keys_sent[0] == keys_sent[1]
    assert keys_sent[0] is not None and UUID_RE.fullmatch(keys_sent[0])
    event = verdict_of(site, "lost-answer")  # one event: the retry was answered from the record
    assert event["idempotency_key"] == keys_sent[0]
    assert event["_key"] == topics.verdict_key("lost-answer", "rad")


def test_the_patient_is_shown_only_when_a_radiologist_asks(page: Page, site: Site) -> None:
    page.goto(site.url)
    page.fill("#token", site.tokens["rad"])
    page.click("#signin")
    page.locator(f'#worklist tr[data-study="{DICOM_STUDY}"]').click()
    expect(page.locator("#study-title")).to_contain_text(DICOM_STUDY)
    expect(page.locator("#patient-name")).to_have_text("")
    assert "Zzplanted" not in page.content(), "the page names nobody until asked"
    page.keyboard.press("p")
    expect(page.locator("#patient-name")).to_contain_text("Zzplanted Patientname, born 1923-08-17")
    expect(page.locator("#patient-name")).to_contain_text(PLANTED["PatientID"])


def test_an_engineer_cannot_ask_for_the_patient(page: Page, site: Site) -> None:
    page.goto(site.url)
    page.fill("#token", site.tokens["eng"])
    page.click("#signin")
    page.locator(f'#worklist tr[data-study="{DICOM_STUDY}"]').click()
    expect(page.locator("#show-patient")).to_be_hidden()
    page.keyboard.press("p")
    expect(page.locator("#patient-name")).to_have_text("")


def test_a_radiologist_flips_between_the_images_of_a_study(page: Page, site: Site) -> None:
    """A PA, a lateral the model does not read, then a late more urgent PA: one row, three images."""
    store = LocalImageStore(site.settings.image_store_dir)
    sizes = {"pa-1": 200, "lat-1": 240, "pa-2": 280}
    uris = {
        i: store.put(png_bytes(seed=n + 7, size=side), suffix=".png")
        for n, (i, side) in enumerate(sizes.items())
    }
    worklist = RedisWorklist(site.redis, site.keys, policy=SlaPolicy())
    views = {"lat-1": "LATERAL"}
    worklist.write([study_entry("multi-image", {"pa-1": 0.3, "lat-1": None}, views=views, uris=uris)])
    late = {"pa-1": 0.3, "lat-1": None, "pa-2": 0.5}
    flagged: dict[str, tuple[str, ...]] = {
        "pa-2": ("body_part:ABDOMEN",)
    }  # its header says another body part: shown, flagged
    worklist.write(
        [study_entry("multi-image", late, views=views, uris=uris, corners={"pa-2": 1}, flags=flagged)]
    )

    page.goto(site.url)
    page.fill("#token", site.tokens["rad"])
    page.click("#signin")
    expect(page.locator('#worklist tr[data-study="multi-image"]')).to_have_count(1)
    page.locator('#worklist tr[data-study="multi-image"]').click()
    buttons = page.locator("#image-strip button")
    expect(buttons).to_have_text(["1. PA · 0.30", "2. LATERAL · not read", "3. PA · 0.50 ⚑"])
    selected = page.locator('#image-strip button[aria-selected="true"]')

    def shown_width() -> int:
        page.wait_for_function("document.querySelector('#study-image').complete")
        return int(page.evaluate("document.querySelector('#study-image').naturalWidth"))

    expect(selected).to_have_text("3. PA · 0.50 ⚑")  # the study opens on its most urgent image
    page.wait_for_function("document.querySelector('#study-image').naturalWidth === 280")
    expect(page.locator("#image-note")).to_have_text("Flagged: body part ABDOMEN, not chest.")
    expect(page.locator("#heatmap-toggle")).to_be_enabled()

    page.keyboard.press("i")
    expect(selected).to_have_text("1. PA · 0.30")
    page.wait_for_function("document.querySelector('#study-image').naturalWidth === 200")
    expect(page.locator("#image-note")).to_have_text("")
    page.keyboard.press("i")
    expect(selected).to_have_text("2. LATERAL · not read")
    page.wait_for_function("document.querySelector('#study-image').naturalWidth === 240")
    expect(page.locator("#heatmap-toggle")).to_be_disabled()
    expect(page.locator("#image-note")).to_contain_text("not read by the model")

    buttons.nth(2).click()
    expect(selected).to_have_text("3. PA · 0.50 ⚑")
    page.keyboard.press("h")  # this image's own map over it
    expect(page.locator("#heatmap-toggle")).to_be_checked()
    page.wait_for_function("document.querySelector('#study-image').naturalWidth === 280")
    assert shown_width() == 280
