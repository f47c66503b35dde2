"""The reading room in headless Chromium: the viewer (full resolution, zoom, pan, window/level, invert, reset,
full screen, the heatmap layer and its opacity, the image strip), the worklist (finding filter, clocks that
tick, refresh that keeps the reader's place), keyboard-only reading with verdicts on Kafka, and the page at
1280x800 (no horizontal scroll, labels, contrast, a screenshot checked by what it shows)."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Browser, Page, expect

from cxr_triage.labels import LABELS
from cxr_triage.sla import SlaPolicy, Tier
from inference_worker.worklist import RedisWorklist
from tests.browser.site_support import Site, running_site, sign_in, verdict_of
from tests.integration.api_support import put_study
from tests.study_images import study_entry

pytestmark = pytest.mark.integration

BIG = "big-study"
BIG_SIZE = (1500, 1200)  # width, height: larger than any default rendering side
SAMPLE_STEP = 97  # every 97th pixel of the canvas is compared


def _big_pixels() -> np.ndarray:
    """A gradient with structure and noise over the whole 0..255 range (so every window changes something)."""
    w, h = BIG_SIZE
    x = np.linspace(0, 255, w)[None, :]
    y = 40 * np.sin(np.linspace(0, 6 * np.pi, h))[:, None]
    noise = np.random.default_rng(5).normal(0, 12, size=(h, w))
    return np.clip(x + y + noise, 0, 255).astype(np.uint8)


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    with running_site(tmp_path_factory, "reading-room") as site:
        r, keys, store = site.redis, site.keys, site.store
        # Claimed by rad2 first (the top of the list then): overdue, with its reader shown.
        put_study(r, keys, "overdue-claimed", 0.85, age=timedelta(minutes=45))
        claim = httpx.post(
            f"{site.url}/worklist/claim",
            headers={"Authorization": f"Bearer {site.tokens['rad2']}"},
            json={"lease_s": 3600},
        )
        assert claim.json()["study_id"] == "overdue-claimed"
        probabilities = {label: 0.1 for label in LABELS} | {"Pneumothorax": 0.93, "No Finding": 0.02}
        put_study(
            r,
            keys,
            BIG,
            0.97,
            probabilities=probabilities,
            image_uri=store.put(_png(_big_pixels()), suffix=".png"),
        )
        cams = np.zeros((len(LABELS), 8, 8), dtype=np.float16)
        cams[LABELS.index("Pneumothorax"), :3, :3] = 4.0
        r.hset(keys.study(BIG), mapping={"cam_h": 8, "cam_w": 8})
        r.set(keys.cam(BIG), cams.tobytes())
        edema = {label: 0.1 for label in LABELS} | {"Edema": 0.81}
        put_study(r, keys, "edema-study", 0.6, probabilities=edema)
        for n in range(25):  # young and routine: enough rows to scroll, never ahead of the studies above
            put_study(r, keys, f"filler-{n:02d}", 0.1 + n / 200)
        yield site


@pytest.fixture()
def page(browser: Browser, site: Site) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.set_default_timeout(15_000)
    yield page
    context.close()


def _open(page: Page, site: Site, study_id: str) -> None:
    sign_in(page, site)
    page.locator(f'#worklist tr[data-study="{study_id}"]').click()
    expect(page.locator("#study-title")).to_contain_text(study_id)


def _open_big(page: Page, site: Site) -> None:
    _open(page, site, BIG)
    page.wait_for_function(
        "document.querySelector('#viewer').dataset.scale && document.querySelector('#study-canvas').width === 1500"
    )


def _view(page: Page) -> dict[str, float]:
    data = page.evaluate("({...document.querySelector('#viewer').dataset})")
    return {k: float(data[k]) for k in ("scale", "tx", "ty")}


def _samples(page: Page) -> np.ndarray:
    """Every SAMPLE_STEP-th pixel's red value, read back from the viewer's canvas."""
    values = page.evaluate(
        """(step) => {
        const c = document.querySelector('#study-canvas');
        const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        const out = [];
        for (let i = 0; i < data.length / 4; i += step) out.push(data[4 * i]);
        return out;
    }""",
        SAMPLE_STEP,
    )
    return np.asarray(values, dtype=np.int32)


def _source_samples() -> np.ndarray:
    return _big_pixels().reshape(-1)[::SAMPLE_STEP].astype(np.int32)


def _window(g: np.ndarray, width: int, level: int) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2's linear window on 0..255, rounded half up as JavaScript's Math.round."""
    c, w = float(level), float(width)
    y = np.floor(((g - (c - 0.5)) / (w - 1) + 0.5) * 255 + 0.5)
    y = np.where(g <= c - 0.5 - (w - 1) / 2, 0, y)
    y = np.where(g > c - 0.5 + (w - 1) / 2, 255, y)
    return np.clip(y, 0, 255).astype(np.int32)


def _wait_rendered(page: Page, window: int, level: int, invert: bool) -> None:
    page.wait_for_function(
        "([w, l, i]) => { const d = document.querySelector('#viewer').dataset;"
        " return d.window === String(w) && d.level === String(l) && d.invert === String(i); }",
        arg=[window, level, invert],
    )


def test_the_viewer_shows_the_stored_image_at_full_resolution_fitted(page: Page, site: Site) -> None:
    _open_big(page, site)
    size = page.evaluate(
        "[document.querySelector('#study-image').naturalWidth, document.querySelector('#study-image').naturalHeight]"
    )
    assert tuple(size) == BIG_SIZE  # not the 1024-px rendering, not a thumbnail
    assert np.array_equal(_samples(page), _source_samples())  # full range: the stored pixels as they are
    box = page.locator("#viewer").bounding_box()
    assert box is not None
    view = _view(page)
    fit = min(box["width"] / 1500, box["height"] / 1200)
    assert view["scale"] == pytest.approx(fit, abs=1e-3)
    # Centred: the space left over is shared equally.
    assert view["tx"] == pytest.approx((box["width"] - 1500 * fit) / 2, abs=1)
    assert view["ty"] == pytest.approx((box["height"] - 1200 * fit) / 2, abs=1)
    assert box["y"] + box["height"] <= 800  # the viewer fits the 1280x800 window

    # Fitted again when the window changes size.
    page.set_viewport_size({"width": 1100, "height": 700})
    page.wait_for_function(f"Number(document.querySelector('#viewer').dataset.scale) < {fit - 0.01}")
    box = page.locator("#viewer").bounding_box()
    assert box is not None
    assert _view(page)["scale"] == pytest.approx(min(box["width"] / 1500, box["height"] / 1200), abs=1e-3)


def test_zoom_around_the_cursor_pan_and_reset_move_the_view(page: Page, site: Site) -> None:
    _open_big(page, site)
    fitted = _view(page)
    box = page.locator("#viewer").bounding_box()
    assert box is not None
    cx, cy = 150.0, 120.0  # a point of the viewer, off centre
    image_point = ((cx - fitted["tx"]) / fitted["scale"], (cy - fitted["ty"]) / fitted["scale"])
    page.mouse.move(box["x"] + cx, box["y"] + cy)
    page.mouse.wheel(0, -240)
    page.wait_for_function(
        f"Number(document.querySelector('#viewer').dataset.scale) > {fitted['scale'] * 1.2}"
    )
    zoomed = _view(page)
    # The image point under the cursor stayed under it.
    assert (cx - zoomed["tx"]) / zoomed["scale"] == pytest.approx(image_point[0], abs=0.5)
    assert (cy - zoomed["ty"]) / zoomed["scale"] == pytest.approx(image_point[1], abs=0.5)
    transform = page.evaluate("document.querySelector('#viewer-stage').style.transform")
    assert f"scale({zoomed['scale']:.4f}"[:12] in transform

    page.mouse.move(box["x"] + 300, box["y"] + 300)  # drag: the view follows the mouse
    page.mouse.down()
    page.mouse.move(box["x"] + 350, box["y"] + 330, steps=5)
    page.mouse.up()
    dragged = _view(page)
    assert (dragged["tx"] - zoomed["tx"], dragged["ty"] - zoomed["ty"]) == pytest.approx((50, 30), abs=1)
    assert dragged["scale"] == zoomed["scale"]

    page.locator("#viewer").focus()  # arrows pan while the image has the focus
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("ArrowUp")
    arrowed = _view(page)
    assert (arrowed["tx"] - dragged["tx"], arrowed["ty"] - dragged["ty"]) == (40, 40)
    page.keyboard.press("+")
    assert _view(page)["scale"] == pytest.approx(arrowed["scale"] * 1.25, rel=1e-3)
    page.keyboard.press("-")
    assert _view(page)["scale"] == pytest.approx(arrowed["scale"], rel=1e-3)
    page.click("#zoom-in")
    assert _view(page)["scale"] == pytest.approx(arrowed["scale"] * 1.25, rel=1e-3)

    page.keyboard.press("0")  # reset: fitted again
    assert _view(page) == pytest.approx(fitted, abs=0.01)


def test_window_level_and_invert_change_the_pixels_and_reset_restores_them(page: Page, site: Site) -> None:
    _open_big(page, site)
    source = _source_samples()
    page.keyboard.press("2")  # the lung-like preset: W 128, L 72
    _wait_rendered(page, 128, 72, False)
    expect(page.locator("#wl-preset")).to_have_value("lung")
    lung = _samples(page)
    assert np.array_equal(lung, _window(source, 128, 72))
    assert (lung == 255).sum() > (source == 255).sum() * 5  # the bright values are now white

    page.keyboard.press("v")
    _wait_rendered(page, 128, 72, True)
    assert np.array_equal(_samples(page), 255 - lung)
    expect(page.locator("#invert")).to_have_attribute("aria-pressed", "true")
    page.keyboard.press("v")
    _wait_rendered(page, 128, 72, False)

    # Right drag: right widens the window, down raises the level.
    box = page.locator("#viewer").bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + 200, box["y"] + 200)
    page.mouse.down(button="right")
    page.mouse.move(box["x"] + 240, box["y"] + 220, steps=4)
    page.mouse.up(button="right")
    _wait_rendered(page, 168, 92, False)
    expect(page.locator("#wl-preset")).to_have_value("custom")
    assert np.array_equal(_samples(page), _window(source, 168, 92))

    page.locator("#wl-preset").select_option("bone")
    _wait_rendered(page, 96, 200, False)
    assert np.array_equal(_samples(page), _window(source, 96, 200))

    page.locator("#viewer").focus()
    page.keyboard.press("0")  # reset: the stored pixels again
    _wait_rendered(page, 256, 128, False)
    assert np.array_equal(_samples(page), source)


def test_the_heatmap_is_a_layer_of_the_image_size_with_its_own_opacity(page: Page, site: Site) -> None:
    _open_big(page, site)
    expect(page.locator("#heatmap-finding")).to_have_value("Pneumothorax")
    before = _samples(page)
    page.keyboard.press("h")
    layer = page.locator("#heatmap-layer")
    expect(layer).to_be_visible()
    page.wait_for_function("document.querySelector('#heatmap-layer').naturalWidth === 1500")
    assert page.evaluate("document.querySelector('#heatmap-layer').naturalHeight") == 1200
    assert page.evaluate("getComputedStyle(document.querySelector('#heatmap-layer')).opacity") == "0.5"
    assert np.array_equal(_samples(page), before)  # the image's pixels are untouched: the map is over them

    page.keyboard.press("]")
    expect(layer).to_have_css("opacity", "0.6")
    expect(page.locator("#heatmap-opacity-value")).to_have_text("60 %")
    page.locator("#heatmap-opacity").fill("15")
    expect(layer).to_have_css("opacity", "0.15")
    page.locator("#viewer").focus()
    page.keyboard.press("[")
    expect(layer).to_have_css("opacity", "0.05")
    page.keyboard.press("h")
    expect(layer).to_be_hidden()


def test_full_screen_is_asked_for_and_the_image_refits(page: Page, site: Site) -> None:
    _open_big(page, site)
    fitted = _view(page)["scale"]
    page.keyboard.press("f")
    page.wait_for_function("document.fullscreenElement && document.fullscreenElement.id === 'viewer-figure'")
    page.wait_for_function(f"Number(document.querySelector('#viewer').dataset.scale) !== {fitted}")
    page.keyboard.press("f")
    page.wait_for_function("document.fullscreenElement === null")


def test_the_strip_flips_between_full_size_images(page: Page, site: Site) -> None:
    sizes = {"pa-1": (640, 512), "lat-1": (480, 600)}
    uris = {
        image_id: site.store.put(_png(np.full((h, w), 60 + n * 100, dtype=np.uint8)), suffix=".png")
        for n, (image_id, (w, h)) in enumerate(sizes.items())
    }
    worklist = RedisWorklist(site.redis, site.keys, policy=SlaPolicy())
    entry = study_entry(
        "two-views",
        {"pa-1": 0.3, "lat-1": None},
        views={"lat-1": "LATERAL"},
        uris=uris,
        received_at=datetime.now(UTC),
    )
    worklist.write([entry])
    _open(page, site, "two-views")
    canvas = "document.querySelector('#study-canvas')"
    page.wait_for_function(f"{canvas}.width === 640 && {canvas}.height === 512")
    page.keyboard.press("i")
    expect(page.locator('#image-strip button[aria-selected="true"]')).to_have_text("2. LATERAL · not read")
    page.wait_for_function(f"{canvas}.width === 480 && {canvas}.height === 600")
    assert set(_samples(page).tolist()) == {160}  # the second image's pixels, not the first's
    page.locator("#image-strip button").first.click()
    page.wait_for_function(f"{canvas}.width === 640")


def test_the_worklist_filters_by_finding_and_its_clocks_tick(page: Page, site: Site) -> None:
    sign_in(page, site, query="?refresh_ms=60000")  # no refresh during the test: the clocks tick alone
    options = page.locator("#finding-filter option").all_text_contents()
    assert options == ["any", *LABELS]
    row = page.locator('#worklist tr[data-study="overdue-claimed"]')
    expect(row).to_contain_text("claimed by rad2")  # the current reader
    expect(row).to_have_class("tier-critical overdue")

    def seconds(cell: int) -> float:
        return float(row.locator("td").nth(cell).get_attribute("data-seconds") or "nan")

    waited, left = seconds(3), seconds(4)
    text = row.locator("td").nth(4).text_content()
    assert left < 0 and waited > 45 * 60 - 5
    time.sleep(2.2)
    assert seconds(3) - waited == pytest.approx(2.2, abs=1.1)
    assert left - seconds(4) == pytest.approx(2.2, abs=1.1)
    assert row.locator("td").nth(4).text_content() != text

    page.locator("#finding-filter").select_option("Edema")
    expect(page.locator("#worklist tbody tr")).to_have_count(1)
    expect(page.locator("#worklist tbody tr").first).to_have_attribute("data-study", "edema-study")
    page.locator("#finding-min").fill("0.9")
    page.locator("#finding-min").press("Tab")  # change fires on leaving the field
    expect(page.locator("#worklist tbody tr")).to_have_count(0)
    page.locator("#finding-filter").select_option("")
    expect(page.locator("#worklist tbody tr").first).to_be_visible()
    assert page.locator("#worklist tbody tr").count() > 20


def test_a_refresh_keeps_the_focused_row_and_the_scroll_position(page: Page, site: Site) -> None:
    page.set_viewport_size({"width": 1280, "height": 500})  # the list is longer than the window
    sign_in(page, site, query="?refresh_ms=400")
    rows = page.locator("#worklist tbody tr")
    expect(rows.first).to_be_focused()
    for _ in range(12):
        page.keyboard.press("ArrowDown")
    focused = page.evaluate("document.activeElement.dataset.study")
    page.evaluate("window.scrollTo(0, 200)")
    count = rows.count()
    put_study(site.redis, site.keys, "newcomer", 0.95)  # lands above the focused row
    expect(rows).to_have_count(count + 1)
    page.wait_for_timeout(900)  # two more refreshes
    assert page.evaluate("document.activeElement.dataset.study") == focused
    assert page.evaluate("window.scrollY") == 200
    site.redis.delete(site.keys.study("newcomer"))
    site.redis.zrem(site.keys.worklist, "newcomer")
    for tier in Tier:
        site.redis.zrem(site.keys.unread(tier), "newcomer")


def test_two_studies_read_with_the_keyboard_only(page: Page, site: Site) -> None:
    put_study(site.redis, site.keys, "kb-first", 0.99, age=timedelta(minutes=22))
    put_study(site.redis, site.keys, "kb-second", 0.98, age=timedelta(minutes=21))
    sign_in(page, site)
    expect(page.locator("#worklist tbody tr").first).to_be_focused()

    page.keyboard.press("c")  # claim the top study
    expect(page.locator("#study-title")).to_contain_text("kb-first")
    page.keyboard.press("n")  # agree, save, claim and open the next
    expect(page.locator("#study-title")).to_contain_text("kb-second")
    expect(page.locator("#status")).to_contain_text("Verdict saved (verdict). Claimed kb-second")

    page.keyboard.press("e")  # into the findings
    expect(page.locator("#present-0")).to_be_focused()
    page.keyboard.press("ArrowDown")
    page.keyboard.press("ArrowDown")
    expect(page.locator("#present-2")).to_be_focused()
    page.keyboard.press("Space")
    page.keyboard.press("u")
    expect(page.locator("#present-2")).to_be_checked()
    expect(page.locator("#uncertain-2")).to_be_checked()
    page.keyboard.press("Enter")  # save my findings: back to the list, on its top row
    expect(page.locator("#list-view")).to_be_visible()
    expect(page.locator("#status")).to_contain_text("Verdict saved (verdict)")
    expect(page.locator("#worklist tbody tr").first).to_be_focused()
    expect(
        page.locator('#worklist tr[data-study="kb-first"], #worklist tr[data-study="kb-second"]')
    ).to_have_count(0)

    first, second = verdict_of(site, "kb-first"), verdict_of(site, "kb-second")
    assert first["radiologist"] == "rad" and first["agreed_with_model"] is True
    assert first["claimed_at"] is not None
    assert second["agreed_with_model"] is False and second["claimed_at"] is not None
    assert second["labels"]["Cardiomegaly"] == 1 and second["uncertain"] == ["Cardiomegaly"]


def _contrast_failures(page: Page, selector: str) -> list[Any]:
    """Text elements under ``selector`` whose colour against their (first opaque) background is below 4.5:1."""
    return list(
        page.evaluate(
            """(selector) => {
        const parse = (c) => c.match(/[\\d.]+/g).map(Number);
        const lum = ([r, g, b]) => {
            const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
            return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
        };
        const background = (el) => {
            for (; el; el = el.parentElement) {
                const c = parse(getComputedStyle(el).backgroundColor);
                if (c.length < 4 || c[3] > 0) return c;
            }
            return [255, 255, 255];
        };
        const bad = [];
        for (const el of document.querySelectorAll(selector)) {
            if (!el.offsetParent || !el.textContent.trim()) continue;
            const a = lum(parse(getComputedStyle(el).color)), b = lum(background(el));
            const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
            if (ratio < 4.5) bad.push([el.tagName, el.textContent.trim().slice(0, 30), ratio]);
        }
        return bad;
    }""",
            selector,
        )
    )


_UNLABELLED = """() => [...document.querySelectorAll('input, select, textarea, button, [tabindex]')]
    .filter((el) => el.offsetParent && el.tagName !== 'TR')
    .filter((el) => !((el.labels && el.labels.length) || el.getAttribute('aria-label')
        || (el.tagName === 'BUTTON' && el.textContent.trim())))
    .map((el) => el.id || el.outerHTML.slice(0, 60))"""


def test_the_page_at_1280x800_fits_is_labelled_and_readable(page: Page, site: Site, tmp_path: Path) -> None:
    sign_in(page, site)
    assert page.evaluate("document.documentElement.scrollWidth") <= 1280
    assert page.evaluate(_UNLABELLED) == []
    assert _contrast_failures(page, "#worklist td, #worklist th, .keys, .toolbar label, #status") == []
    page.keyboard.press("Tab")  # a keyboard focus shows an outline
    assert page.evaluate("getComputedStyle(document.activeElement).outlineStyle") == "solid"

    page.locator(f'#worklist tr[data-study="{BIG}"]').click()
    page.wait_for_function("document.querySelector('#study-canvas').width === 1500")
    assert page.evaluate("document.documentElement.scrollWidth") <= 1280
    assert page.evaluate(_UNLABELLED) == []
    assert _contrast_failures(page, "#study-view td, #study-view dt, #study-view dd, #shortcuts, label") == []
    expect(page.locator("#shortcuts")).to_be_visible()
    expect(page.locator("#shortcuts")).to_contain_text("save and next")
    # Focus order: the viewer's tools, then the image, then the facts and the verdict form.
    order = page.evaluate(
        """() => ['zoom-in', 'viewer', 'show-patient', 'agree'].map((id) =>
            [...document.querySelectorAll('button, input, select, textarea, [tabindex]')]
                .indexOf(document.getElementById(id)))"""
    )
    assert order == sorted(order) and -1 not in order

    variance = page.evaluate(
        """() => {
        const c = document.querySelector('#study-canvas');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0, sum = 0, sq = 0;
        for (let i = 0; i < d.length; i += 4 * 101) { n++; sum += d[i]; sq += d[i] * d[i]; }
        return sq / n - (sum / n) ** 2;
    }"""
    )
    assert variance > 100  # the viewer shows an image, not a blank canvas
    shot = tmp_path / "reading-room.png"  # never into the repository
    page.screenshot(path=str(shot))
    captured = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert captured.shape == (800, 1280)
    box = page.locator("#viewer").bounding_box()
    assert box is not None
    x, y, w, h = (round(box[k]) for k in ("x", "y", "width", "height"))
    assert captured[y : y + h, x : x + w].std() > 10  # the radiograph is on screen, with its structure
