"""The status page: rendered in-process, and loaded by headless Chromium from a real
``alertq run`` while alerts are pending and failed (screenshots for the README).

Split by test tier: these are the integration tests; see also ``tests/unit/test_status_page.py``
and ``tests/acceptance/test_status_page.py``.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from alertq import statuspage
from alertq.api import create_app
from alertq.breaker import CircuitBreaker
from alertq.config import Settings
from alertq.db import transaction
from alertq.delivery import AlertmanagerClient
from alertq.engine import AlertWorker
from alertq.enqueue import enqueue_alert
from alertq.managed import ManagedAlerts
from alertq.opsview import OpsContext
from tests.support import free_port
from tests.support.clock import FakeClock
from tests.support.stub import StubAlertmanager

Factory = async_sessionmaker[AsyncSession]


HOSTILE_ERROR = 'label "team" is invalid: <script>alert("pwned")</script> & <b>bold</b>'


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
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
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


async def test_page_views_within_the_cache_age_send_the_database_nothing(
    db_url: str, engine: AsyncEngine, session_factory: Factory, stub: StubAlertmanager
) -> None:
    # Red-team pass 3: the failed rows, intake sources and managed lists were read on every
    # view; unauthenticated views of a 150,000-row queue took the intake's p50 from 14 to
    # 672 ms. Now every read of the page is cached as the snapshot is.
    settings = page_settings(db_url, stub.url).model_copy(update={"stats_cache_seconds": 5.0})
    clock = FakeClock()
    context = OpsContext(settings, session_factory, clock=clock)
    await enqueue(session_factory, "Cached")
    statements: list[str] = []

    def count(_c: Any, _cur: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", count)
    try:
        async with page_of(context) as html:
            assert stat(html, "pending") == "1"
        assert statements, "the first view reads the database"
        statements.clear()
        for _ in range(3):
            async with page_of(context) as html:
                assert stat(html, "pending") == "1"
        assert statements == []
        await enqueue(session_factory, "Later")
        context.invalidate()  # what every mutation of the API does
        async with page_of(context) as html:
            assert stat(html, "pending") == "2"
        assert statements
        statements.clear()
        clock.advance(6)  # past the cache age
        async with page_of(context):
            pass
        assert statements
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", count)


async def test_past_the_shown_managed_alerts_and_heartbeats_the_page_links_the_rest(
    db_url: str, session_factory: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Red-team pass 4: with 61 managed alerts the header said "· 50" and nothing more.
    monkeypatch.setattr(statuspage, "MANAGED_SHOWN", 3)
    settings = page_settings(db_url, "http://127.0.0.1:9")
    alerts = ManagedAlerts(settings, session_factory)
    for i in range(4):
        await alerts.fire({"alertname": "Disk", "host": f"h{i}"})
        await alerts.heartbeat(f"job{i}", 3600)
    shown = [v.fingerprint for v in await alerts.list_alerts(limit=3)]
    async with page_of(OpsContext(settings, session_factory)) as html:
        managed = html[html.index('aria-label="managed alerts"') : html.index('id="heartbeats"')]
        assert "· 3+" in managed and managed.count("<tr>") == 1 + 3
        assert f'href="/api/managed?after={shown[-1]}"' in managed
        assert 'href="/api/heartbeats?after=job2"' in html[html.index('id="heartbeats"') :]
    monkeypatch.setattr(statuspage, "MANAGED_SHOWN", 4)
    async with page_of(OpsContext(settings, session_factory)) as html:
        assert "· 4+" not in html and 'id="managed-more"' not in html
