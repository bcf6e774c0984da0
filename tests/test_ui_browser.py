"""The review station in a real headless Chromium (Debian's ``chromium``, driven by Playwright
for Python; ``make system-deps`` installs it): sign in, open a specimen made from real fields
(the shipped models on Taleqani development fields; synthetic fields and the tiny models where
the data set is absent), reclassify a cell with the keyboard, sign, and check that FHIR and HL7
changed. No request may leave 127.0.0.1 and the console must stay free of errors. Screenshots at
1366x768 and 1920x1080 go to ``test-artifacts/ui/`` (git-ignored); the load time of a 500-cell
specimen's review page is logged (not asserted)."""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis

from daemon.api.app import create_app
from daemon.api.auth import hash_key
from daemon.lis.hl7 import parse
from daemon.settings import load_settings
from daemon.store.specimens import SpecimenStore
from tests.conftest import MEASURED, serve_http, settings_dict
from tests.review_data import (
    REAL_DATA,
    SHIPPED_MODELS,
    real_specimen,
    synthetic_analysed_specimen,
    synthetic_specimen,
)

log = logging.getLogger(__name__)

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts" / "ui"
ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update",
        "--no-first-run", "--disable-gpu"]
REVIEWER_KEY = "lks_browser-reviewer-key-000000000000000000000000"
READER_KEY = "lks_browser-reader-key-00000000000000000000000000"
#: every gallery image within the viewport has loaded (lazy loading fetches only those)
VISIBLE_IMAGES_LOADED = (
    "Array.from(document.querySelectorAll('#gallery .cell img'))"
    ".filter(i => i.getBoundingClientRect().top < innerHeight)"
    ".every(i => i.complete && i.naturalWidth > 0)")
KEY_OF = {"benign": "1", "early_pre_b": "2", "pre_b": "3", "pro_b": "4", "unidentified": "u"}

sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(),
                                reason="Debian's chromium is missing: make system-deps")


def test_review_a_real_specimen_in_chromium(
    request: pytest.FixtureRequest, tmp_path: Path, tiny_models: tuple[Path, Path], redis_url: str, redis_client: redis.Redis
) -> None:
    real = REAL_DATA.is_dir() and (SHIPPED_MODELS / "classifier.onnx").is_file()
    models = (SHIPPED_MODELS / "segmenter.onnx", SHIPPED_MODELS / "classifier.onnx") if real \
        else tiny_models
    settings = load_settings(None, **settings_dict(tmp_path, models, redis={"url": redis_url},
                                                   auth={"keys": [
        {"name": "rev", "role": "reviewer", "sha256": hash_key(REVIEWER_KEY)},
        {"name": "lis", "role": "read", "sha256": hash_key(READER_KEY)},
    ]}))
    synthetic_specimen(redis_client, settings, "BIG-500", frames=100, cells_per_frame=5, seed=5,
                       complete=True)
    synthetic_specimen(redis_client, settings, "OPEN-002", frames=2, seed=9)
    specimen = "REAL-001"  # stored last: the live view shows its frames
    if real:
        results = real_specimen(redis_client, settings, specimen, per_class=2)
    else:
        results = synthetic_specimen(redis_client, settings, specimen, frames=8)
    assert sum(len(r.cells) for r in results) > 0
    SpecimenStore(redis_client).complete(specimen, "api")
    # For the README's screenshots: synthetic fields (no patient image), stored last so the
    # live view shows them.
    synthetic_analysed_specimen(redis_client, settings, "DEMO-003", frames=6)
    SpecimenStore(redis_client).complete("DEMO-003", "api")

    if ARTIFACTS.exists():
        shutil.rmtree(ARTIFACTS)
    ARTIFACTS.mkdir(parents=True)
    reader = {"Authorization": f"Bearer {READER_KEY}"}
    with serve_http(create_app(settings, redis_client)) as api:
        base = str(api.base_url).rstrip("/")
        before = api.get(f"/specimens/{specimen}/fhir", headers=reader).json()
        assert before["status"] == "preliminary"
        errors: list[str] = []
        foreign: list[str] = []
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
            context = browser.new_context(viewport={"width": 1366, "height": 768})

            def guard(route) -> None:
                if urlsplit(route.request.url).hostname == "127.0.0.1":
                    route.continue_()
                else:
                    foreign.append(route.request.url)
                    route.abort()

            context.route("**/*", guard)
            page = context.new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("response", lambda r: errors.append(f"{r.status} {r.url}")
                    if r.status >= 400 else None)

            # Sign in: the app sends us to the login page first.
            page.goto(f"{base}/ui/specimens")
            assert "/ui/login" in page.url
            page.screenshot(path=str(ARTIFACTS / "login-1366x768.png"))
            page.fill("#api_key", REVIEWER_KEY)
            page.click("#sign-in")
            page.wait_for_url(f"{base}/ui/specimens")
            assert "awaiting review" in page.inner_text("table.specimens")
            page.screenshot(path=str(ARTIFACTS / "specimens-1366x768.png"), full_page=True)

            # Open the specimen; its gallery loads.
            page.click(f"text={specimen}")
            page.wait_for_selector("#gallery .cell.selected")
            until(page, VISIBLE_IMAGES_LOADED)
            page.screenshot(path=str(ARTIFACTS / "review-1366x768.png"))

            # Reclassify the first (least confident) cell with the keyboard, accept the next.
            first = page.locator("#gallery .cell").nth(0)
            frame_id, index = first.get_attribute("data-frame"), first.get_attribute("data-index")
            model = first.get_attribute("data-class")
            target = "pro_b" if model != "pro_b" else "benign"
            page.keyboard.press(KEY_OF[target])
            until(page,
                "document.querySelector('#gallery .cell').dataset.class === "
                f"{json.dumps(target)}")
            assert "reviewed" in (first.get_attribute("class") or "")
            assert page.inner_text("#reviewed-count") == "1"
            page.keyboard.press("Enter")  # the selection moved on: accept that call
            until(page, "document.querySelector('#reviewed-count').textContent === '2'")

            # CAM overlays on and off; the frame view with outlines.
            page.keyboard.press("c")
            until(page,
                "(() => { const i = document.querySelector('#gallery .cell img');"
                " return i.src.endsWith('/cam') && i.complete && i.naturalWidth > 0; })()")
            page.screenshot(path=str(ARTIFACTS / "review-cam-1366x768.png"))
            page.keyboard.press("c")
            page.keyboard.press("f")
            page.wait_for_selector("#frame-dialog[open] #frame-view rect.outline")
            page.wait_for_timeout(200)
            page.screenshot(path=str(ARTIFACTS / "frame-1366x768.png"))
            page.keyboard.press("Escape")

            # Sign: the page reloads verified.
            page.click("#sign")
            page.wait_for_selector("#verified-by")
            assert page.inner_text("#verified-by") == "rev"
            assert page.inner_text("#result-status") == "final"

            page.set_viewport_size({"width": 1920, "height": 1080})
            page.wait_for_timeout(200)
            until(page, VISIBLE_IMAGES_LOADED)
            page.screenshot(path=str(ARTIFACTS / "review-verified-1920x1080.png"))
            page.goto(f"{base}/ui/specimens")
            page.screenshot(path=str(ARTIFACTS / "specimens-1920x1080.png"))
            page.goto(f"{base}/ui/rigs")
            page.wait_for_selector("#rigs svg.thumb rect.outline")
            page.screenshot(path=str(ARTIFACTS / "live-1920x1080.png"))
            page.set_viewport_size({"width": 1366, "height": 768})
            page.wait_for_timeout(200)
            page.screenshot(path=str(ARTIFACTS / "live-1366x768.png"))
            page.goto(f"{base}/ui/specimens/DEMO-003")
            until(page, VISIBLE_IMAGES_LOADED)
            page.screenshot(path=str(ARTIFACTS / "demo-review-1366x768.png"))

            # The 500-cell specimen: how long its review page takes (logged, not asserted).
            started = time.perf_counter()
            page.goto(f"{base}/ui/specimens/BIG-500", wait_until="load")
            wall = (time.perf_counter() - started) * 1000
            timing = page.evaluate(
                "(() => { const n = performance.getEntriesByType('navigation')[0];"
                " return {response: n.responseEnd, dom: n.domContentLoadedEventEnd,"
                " load: n.loadEventEnd}; })()")
            cells = page.locator("#gallery .cell").count()
            line = (f"review page of a {cells}-cell specimen: server response "
                    f"{timing['response']:.0f} ms, DOM ready {timing['dom']:.0f} ms, load "
                    f"{timing['load']:.0f} ms (wall {wall:.0f} ms)")
            log.warning(line)
            request.config.stash[MEASURED].append(line)
            (ARTIFACTS / "load-time.txt").write_text(line + "\n")
            assert cells == 500
            page.screenshot(path=str(ARTIFACTS / "review-500-cells-1920x1080.png"))

            page.goto(f"{base}/ui/specimens")  # no image requests in flight while signing out
            page.click("#logout")
            page.wait_for_url(f"{base}/ui/login")
            browser.close()

        assert not foreign, f"requests left 127.0.0.1: {foreign}"
        assert not errors, f"console errors: {errors}"

        # The LIS sees the verified result.
        fhir = api.get(f"/specimens/{specimen}/fhir", headers=reader).json()
        assert fhir["status"] == "final"
        assert fhir["resultsInterpreter"][0]["display"] == "rev"
        assert fhir["conclusion"] != before["conclusion"]
        hl7 = api.get(f"/specimens/{specimen}/hl7", headers=reader).text
        assert parse(hl7).validate()
        obr = next(s for s in hl7.split("\r") if s.startswith("OBR")).split("|")
        assert obr[25] == "F" and obr[32] == "rev"
        spec = api.get(f"/specimens/{specimen}", headers=reader).json()
        assert spec["reclassified_cells"] == 1
        after_count = spec["cells"].get(target, 0) if target != "unidentified" \
            else spec["unidentified_cells"]
        model_count = spec["model_cells"].get(target, 0)
        assert after_count == model_count + 1
        trail = [e for e in redis_audit(redis_client) if e.get("frame_id") == frame_id]
        assert any(e["action"] == "cell.reclassify"
                   and json.loads(e["detail"]) == {"cell": int(index), "before": model,
                                                   "after": target, "model": model}
                   for e in trail)


def redis_audit(client: redis.Redis) -> list[dict]:
    from daemon.store import audit

    items, _ = audit.page(client, None, 10_000)
    return [item.model_dump() for item in items]


def until(page, expression: str, timeout: float = 20.0) -> None:
    """Poll a JavaScript expression until it is truthy (``page.evaluate`` runs outside the
    page's CSP, which forbids the eval that ``wait_for_function`` uses)."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for: {expression}")
        page.wait_for_timeout(50)
