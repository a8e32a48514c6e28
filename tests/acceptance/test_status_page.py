"""The status page: rendered in-process, and loaded by headless Chromium from a real
``alertq run`` while alerts are pending and failed (screenshots for the README).

Split by test tier: these are the acceptance tests; see also ``tests/unit/test_status_page.py``
and ``tests/integration/test_status_page.py``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import httpx
from playwright.async_api import Page, async_playwright

from alertq.config import Settings
from alertq.db import create_engine, create_session_factory
from tests.integration.test_status_page import HOSTILE_ERROR, enqueue
from tests.support import free_port
from tests.support.processes import alertq_env, start_alertq, wait_until
from tests.support.stub import StubAlertmanager


def screenshot_dir(tmp_path: Path) -> Path:
    """Where the screenshots go: ``ALERTQ_TEST_SCREENSHOTS=docs/screenshots`` refreshes the
    README's images; by default a temporary directory, so a test run leaves the checkout
    as it found it."""
    chosen = os.environ.get("ALERTQ_TEST_SCREENSHOTS")
    return Path(chosen) if chosen else tmp_path / "screenshots"


CHROMIUM = "/usr/bin/chromium"


CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


TOKEN = "status-page-token"


async def _stats(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/api/stats")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def _shown(page: Page) -> dict[str, str]:
    return {
        name: (await page.inner_text(f'[data-stat="{name}"]')).strip()
        for name in ("pending", "failed", "sent", "superseded")
    }


async def test_chromium_shows_the_numbers_of_api_stats_and_saves_screenshots(
    tmp_path: Path, sqlite_template: Path, stub: StubAlertmanager
) -> None:
    shots = screenshot_dir(tmp_path)
    db = tmp_path / "alertq.db"
    shutil.copy(sqlite_template, db)
    db_url = f"sqlite+aiosqlite:///{db}"
    port = free_port()
    dead = f"http://127.0.0.1:{free_port()}"
    env = alertq_env(
        db_url,
        stub.url,
        dead,
        http_addr=f"127.0.0.1:{port}",
        api_token=TOKEN,
        stats_cache_seconds=1,
        poll_interval=0.1,
        alertmanager_timeout=2,
        lease_seconds=5,
        instance="alertq-demo",
    )
    engine = create_engine(Settings(database_url=db_url))
    factory = create_session_factory(engine)
    base = f"http://127.0.0.1:{port}"
    try:
        with start_alertq(["run"], env, cwd=tmp_path) as server:
            async with httpx.AsyncClient(base_url=base, trust_env=False, timeout=10) as client:

                async def serving() -> bool:
                    assert server.running, server.describe()
                    try:
                        return (await client.get("/healthz")).status_code == 200
                    except httpx.TransportError:
                        return False

                await wait_until(serving, within=30, message=server.describe)

                async def reaches(**expected: int) -> bool:
                    stats = await _stats(client)
                    return all(stats[k] == v for k, v in expected.items())

                # Rejected by Alertmanager: failed, with a hostile error text.
                stub.respond(400, HOSTILE_ERROR)
                await enqueue(factory, "CostSimSchemaDrift", "PricingFeedStale", "QuotaReport")
                await wait_until(lambda: reaches(failed=3), within=30, message=server.describe)
                # Accepted: sent, in a few waves so the chart has a shape.
                stub.respond(200)
                for wave in range(4):
                    await enqueue(factory, *(f"Wave{wave}Alert{i}" for i in range(10 * (wave + 1))))
                    await wait_until(
                        lambda w=wave: reaches(sent=5 * (w + 1) * (w + 2)),
                        within=30,
                        message=server.describe,
                    )
                # Alertmanager busy: pending, retried with backoff.
                stub.respond(503, "busy: try again later")
                pending_ids = await enqueue(
                    factory, "DiskFull", "LatencyHigh", "QueueBacklog", "CertExpiry", "NodeDown"
                )

                async def all_tried() -> bool:
                    page = await client.get("/api/alerts", params={"status": "pending"})
                    items = page.json()["items"]
                    return len(items) == 5 and all(i["attempts"] >= 1 for i in items)

                await wait_until(all_tried, within=30, message=server.describe)
                trip = await client.post(
                    "/api/breakers/costsim_v2/trip",
                    json={"reason": "drift 0.41 above 0.2 for 3 consecutive reports"},
                    headers={"Authorization": f"Bearer {TOKEN}"},
                )
                assert trip.status_code == 200, trip.text
                await wait_until(
                    lambda: reaches(pending=len(pending_ids) + 1, failed=3, sent=100),
                    within=30,
                    message=server.describe,
                )

                async with async_playwright() as pw:
                    browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                    try:
                        page = await browser.new_page(viewport={"width": 1280, "height": 800})
                        response = await page.goto(f"{base}/")
                        assert response is not None and response.status == 200
                        shown = await _shown(page)
                        api = await _stats(client)
                        assert shown == {k: str(api[k]) for k in shown}, (shown, api)
                        assert shown["pending"] == "6" and shown["failed"] == "3"
                        oldest = await page.get_attribute(
                            '[data-stat="oldest_due_age_seconds"]', "data-seconds"
                        )
                        assert oldest is not None
                        assert abs(float(oldest) - api["oldest_due_age_seconds"]) < 2
                        failed_text = await page.inner_text("#failed")
                        assert '<script>alert("pwned")</script>' in failed_text
                        assert await page.locator("#failed script, #failed b").count() == 0
                        ams = await page.inner_text("#alertmanagers")
                        assert dead in ams and stub.url in ams
                        assert await page.locator("#no-alertmanager").count() == 0
                        assert "costsim_v2" in await page.inner_text("#incidents")
                        shots.mkdir(parents=True, exist_ok=True)
                        await page.screenshot(path=str(shots / "status-desktop.png"))

                        phone = await browser.new_page(
                            viewport={"width": 390, "height": 844},
                            device_scale_factor=2,
                            is_mobile=True,
                        )
                        await phone.goto(f"{base}/")
                        assert await _shown(phone) == shown
                        width = await phone.evaluate("document.documentElement.scrollWidth")
                        assert width <= 390, f"the page scrolls sideways on a phone ({width}px)"
                        await phone.screenshot(path=str(shots / "status-phone.png"))
                    finally:
                        await browser.close()
    finally:
        await engine.dispose()
    for name in ("status-desktop.png", "status-phone.png"):
        assert (shots / name).stat().st_size > 10_000, name
