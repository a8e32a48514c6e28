"""The status page: rendered in-process, and loaded by headless Chromium from a real
``alertq run`` while alerts are pending and failed (screenshots for the README)."""

from __future__ import annotations

import re
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Page, async_playwright
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from alertq.api import create_app
from alertq.breaker import CircuitBreaker
from alertq.config import Settings
from alertq.db import create_engine, create_session_factory, transaction
from alertq.delivery import AlertmanagerClient
from alertq.engine import AlertWorker
from alertq.enqueue import enqueue_alert
from alertq.opsview import OpsContext, Sample
from alertq.statuspage import build_chart
from tests.support import free_port
from tests.support.processes import alertq_env, start_alertq, wait_until
from tests.support.stub import StubAlertmanager

Factory = async_sessionmaker[AsyncSession]
SCREENSHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
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
HOSTILE_ERROR = 'label "team" is invalid: <script>alert("pwned")</script> & <b>bold</b>'
TOKEN = "status-page-token"


def page_settings(db_url: str, *urls: str) -> Settings:
    return Settings(
        database_url=db_url,
        alertmanager_urls=list(urls),
        stats_cache_seconds=0,
        alertmanager_timeout=2.0,
        lease_seconds=5.0,
        concurrency=1,
    )


def alert(name: str) -> list[dict[str, Any]]:
    return [{"labels": {"alertname": name, "team": "ops"}, "annotations": {"summary": name}}]


async def enqueue(factory: Factory, *names: str) -> list[int]:
    async with transaction(factory) as s:
        return [
            (await enqueue_alert(s, alert(n), "disable", notify_throttle=1.0)).id for n in names
        ]


async def deliver_once(settings: Settings, factory: Factory) -> None:
    client = AlertmanagerClient.from_settings(settings)
    try:
        await AlertWorker(settings, factory).run_once(client)
    finally:
        await client.aclose()


@asynccontextmanager
async def page_of(context: OpsContext) -> AsyncIterator[str]:
    """The status page's HTML, as the app serves it."""
    transport = httpx.ASGITransport(app=create_app(context))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        response = await client.get("/")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/html")
        yield response.text


async def check_health(context: OpsContext, settings: Settings) -> None:
    probe = AlertmanagerClient.from_settings(settings)
    try:
        context.record_health(await probe.check_ready())
    finally:
        await probe.aclose()


def stat(html: str, name: str) -> str:
    found = re.search(rf'data-stat="{name}"[^>]*>([^<]*)<', html)
    assert found, f"no {name} on the page"
    return found.group(1).strip()


# --------------------------------------------------------------------------- in-process


async def test_failed_rows_show_their_last_error_escaped(
    db_url: str, session_factory: Factory, stub: StubAlertmanager
) -> None:
    settings = page_settings(db_url, stub.url)
    stub.respond(400, HOSTILE_ERROR)
    await enqueue(session_factory, "Rejected")
    await deliver_once(settings, session_factory)
    (pending,) = await enqueue(session_factory, "Waiting")
    async with page_of(OpsContext(settings, session_factory)) as html:
        assert stat(html, "failed") == "1" and stat(html, "pending") == "1"
        assert "<script>alert(" not in html
        assert "&lt;script&gt;alert(&#34;pwned&#34;)&lt;/script&gt; &amp; &lt;b&gt;bold" in html
        assert "Rejected" in html and pending > 0


async def test_the_page_says_plainly_when_no_alertmanager_answers(
    db_url: str, session_factory: Factory, stub: StubAlertmanager
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    settings = page_settings(db_url, dead, stub.url)
    context = OpsContext(settings, session_factory)
    async with page_of(context) as html:
        assert "Checking the Alertmanagers" in html
        assert "No Alertmanager is answering" not in html
    stub.set_ready(False)
    await check_health(context, settings)
    async with page_of(context) as html:
        assert "No Alertmanager is answering" in html
        assert "connection refused" in html and "HTTP 503" in html
    stub.set_ready(True)
    await check_health(context, settings)
    async with page_of(context) as html:
        assert "No Alertmanager is answering" not in html
        assert html.count('class="pill ok">ready') == 1
        assert html.count('class="pill bad">down') == 1


async def test_open_breakers_and_their_incidents_are_listed(
    db_url: str, session_factory: Factory
) -> None:
    settings = page_settings(db_url, "http://127.0.0.1:9")
    breaker = CircuitBreaker(settings, session_factory)
    await breaker.disable("costsim_v2", "drift 0.4 above 0.2 <by hand>", "ops")
    await breaker.disable("pricing", "was open", "ops")
    await breaker.enable("pricing", "ops", "fixed")
    async with page_of(OpsContext(settings, session_factory)) as html:
        assert stat(html, "open_breakers") == "1"
        breakers = html[html.index('id="breakers"') : html.index('id="incidents"')]
        assert "costsim_v2" in breakers and "pricing" in breakers
        assert breakers.count('class="pill bad">open') == 1
        incidents = html[html.index('id="incidents"') :]
        assert "drift 0.4 above 0.2 &lt;by hand&gt;" in incidents
        assert "was open" not in incidents


def test_chart_plots_delivery_rate_and_queue_depth_from_samples() -> None:
    now = datetime.now(UTC)
    samples = [
        Sample(now - timedelta(seconds=40), 0, 10, 0),
        Sample(now - timedelta(seconds=30), 100, 5, 0),  # 10 rows/s
        Sample(now - timedelta(seconds=20), 100, 5, 0),  # idle
        Sample(now - timedelta(seconds=10), 400, 0, 0),  # 30 rows/s
    ]
    chart = build_chart(samples, now)
    rate, depth = chart.series
    assert (rate.latest, rate.peak) == ("30.0/s", "30.0/s")
    assert (depth.latest, depth.peak) == ("0", "10")
    rate_points = [tuple(map(float, p.split(","))) for p in rate.line.split()]
    assert [round(x) for x, _ in rate_points] == [150, 300, 450]  # 40 s span over 600 units
    heights = [120 - y for _, y in rate_points]
    assert heights[1] == 0 and heights[2] == pytest.approx(3 * heights[0], abs=0.5)
    assert chart.axis == ("−40 s", "−20 s", "now")
    old = [Sample(now - timedelta(hours=2), 0, 1, 0), *samples]
    assert build_chart(old, now).series[1].peak == "10"  # older than an hour: left out


# --------------------------------------------------------------------------- browser


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
                        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
                        await page.screenshot(path=str(SCREENSHOTS / "status-desktop.png"))

                        phone = await browser.new_page(
                            viewport={"width": 390, "height": 844},
                            device_scale_factor=2,
                            is_mobile=True,
                        )
                        await phone.goto(f"{base}/")
                        assert await _shown(phone) == shown
                        width = await phone.evaluate("document.documentElement.scrollWidth")
                        assert width <= 390, f"the page scrolls sideways on a phone ({width}px)"
                        await phone.screenshot(path=str(SCREENSHOTS / "status-phone.png"))
                    finally:
                        await browser.close()
    finally:
        await engine.dispose()
    assert (SCREENSHOTS / "status-desktop.png").stat().st_size > 10_000
