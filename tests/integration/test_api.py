"""The ops API in-process (httpx over ASGI), on SQLite and PostgreSQL, and schemathesis
against its OpenAPI schema."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.pool import NullPool

from alertq.api import create_app
from alertq.breaker import CircuitBreaker
from alertq.config import Settings
from alertq.db import create_engine, create_session_factory, transaction
from alertq.delivery import AlertmanagerClient
from alertq.driver import get_alert_driver
from alertq.engine import AlertWorker
from alertq.enqueue import enqueue_alert
from alertq.opsview import OpsContext
from tests.support import free_port
from tests.support.stub import StubAlertmanager

Factory = async_sessionmaker[AsyncSession]
TOKEN = "api-token-7c0ffee"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


def api_settings(db_url: str, *urls: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": db_url,
        "alertmanager_urls": list(urls) or [f"http://127.0.0.1:{free_port()}"],
        "api_token": TOKEN,
        "stats_cache_seconds": 0,
        "alertmanager_timeout": 2.0,
        "lease_seconds": 5.0,
        "concurrency": 1,
        "max_attempts": 3,
    }
    values.update(overrides)
    return Settings(**values)


@asynccontextmanager
async def serve(
    settings: Settings, factory: Factory, **context_options: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, OpsContext]]:
    """The app on an in-process transport, and the context it reads."""
    context = OpsContext(settings, factory, **context_options)
    transport = httpx.ASGITransport(app=create_app(context))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        yield client, context


def payload(name: str, **labels: str) -> list[dict[str, Any]]:
    return [{"labels": {"alertname": name, **labels}, "annotations": {"summary": name}}]


async def enqueue(factory: Factory, *names: str, now: datetime | None = None) -> list[int]:
    async with transaction(factory) as s:
        return [(await enqueue_alert(s, payload(n), "disable", now=now)).id for n in names]


async def fail(
    settings: Settings, factory: Factory, stub: StubAlertmanager, *names: str
) -> list[int]:
    """Rows that really failed: the worker posted them and the stub rejected them (400)."""
    stub.respond(400, 'bad label <script>alert("x")</script>')
    ids = await enqueue(factory, *names)
    client = AlertmanagerClient.from_settings(
        settings.model_copy(update={"alertmanager_urls": [stub.url]})
    )
    try:
        await AlertWorker(settings, factory).run_once(client)
    finally:
        await client.aclose()
    stub.reset()
    return ids


async def statuses(factory: Factory) -> dict[int, str]:
    async with transaction(factory) as s:
        return {r.id: r.status for r in await get_alert_driver(s).alerts_list(limit=10_000)}


# --------------------------------------------------------------------------- reads


async def test_stats_count_rows_by_status_and_the_oldest_due_age(
    db_url: str, session_factory: Factory, stub: StubAlertmanager
) -> None:
    settings = api_settings(db_url, stub.url)
    await fail(settings, session_factory, stub, "F1", "F2")
    await enqueue(session_factory, "P1", now=datetime.now(UTC) - timedelta(seconds=90))
    await enqueue(session_factory, "P2")
    async with serve(settings, session_factory) as (client, _):
        response = await client.get("/api/stats")
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["pending"], body["failed"], body["sent"], body["total"]) == (2, 2, 0, 4)
    assert 89 <= body["oldest_due_age_seconds"] < 150


async def test_stats_are_cached_and_a_mutation_refreshes_them(
    db_url: str, session_factory: Factory
) -> None:
    clock = Clock()
    settings = api_settings(db_url, stats_cache_seconds=30)
    async with serve(settings, session_factory, clock=clock) as (client, _):
        assert (await client.get("/api/stats")).json()["pending"] == 0
        await enqueue(session_factory, "A", "B")
        # Within the cache window the queue is not recounted: not per request, not per scrape.
        assert (await client.get("/api/stats")).json()["pending"] == 0
        assert 'alertq_queue_rows{status="pending"} 0.0' in (await client.get("/metrics")).text
        clock.now += timedelta(seconds=31)
        assert (await client.get("/api/stats")).json()["pending"] == 2
        assert 'alertq_queue_rows{status="pending"} 2.0' in (await client.get("/metrics")).text
        await enqueue(session_factory, "C")
        response = await client.post("/api/alerts/purge", json={"older_than": "1d"}, headers=AUTH)
        assert response.status_code == 200, response.text
        assert (await client.get("/api/stats")).json()["pending"] == 3


async def test_alert_list_is_newest_first_with_a_keyset_cursor(
    db_url: str, session_factory: Factory, stub: StubAlertmanager
) -> None:
    settings = api_settings(db_url, stub.url)
    failed = await fail(settings, session_factory, stub, "F1")
    ids = await enqueue(session_factory, *(f"A{i}" for i in range(5)))
    async with serve(settings, session_factory) as (client, _):
        seen: list[int] = []
        cursor: int | None = None
        while True:
            params: dict[str, Any] = {"limit": 2, "status": "pending"}
            if cursor is not None:
                params["before_id"] = cursor
            page = (await client.get("/api/alerts", params=params)).json()
            seen += [item["id"] for item in page["items"]]
            assert all(item["status"] == "pending" for item in page["items"])
            cursor = page["next_before_id"]
            if cursor is None:
                break
        assert seen == sorted(ids, reverse=True)
        only_failed = (await client.get("/api/alerts", params={"status": "failed"})).json()
        assert [i["id"] for i in only_failed["items"]] == failed
        assert only_failed["items"][0]["alertnames"] == ["F1"]
        assert "400" in only_failed["items"][0]["last_error"]
        assert only_failed["next_before_id"] is None


async def test_one_alert_comes_with_its_payload_and_unknown_ids_are_404(
    db_url: str, session_factory: Factory
) -> None:
    (row_id,) = await enqueue(session_factory, "One")
    async with serve(api_settings(db_url), session_factory) as (client, _):
        response = await client.get(f"/api/alerts/{row_id}")
        assert response.status_code == 200
        assert response.json()["payload"][0]["labels"] == {"alertname": "One"}
        missing = await client.get(f"/api/alerts/{row_id + 1000}")
        assert missing.status_code == 404
        assert str(row_id + 1000) in missing.json()["detail"]


# --------------------------------------------------------------------------- auth


async def test_mutations_without_the_token_are_refused_and_change_nothing(
    db_url: str, session_factory: Factory, stub: StubAlertmanager
) -> None:
    settings = api_settings(db_url, stub.url)
    (failed_id,) = await fail(settings, session_factory, stub, "F1")
    await enqueue(session_factory, "Old", now=datetime.now(UTC) - timedelta(days=3))
    breaker = CircuitBreaker(settings, session_factory)
    await breaker.disable("held", "kept open by the test", "test")
    before = await statuses(session_factory)
    mutations: list[tuple[str, dict[str, Any] | None]] = [
        ("/api/alerts/retry-failed", {"max_retries": 2}),
        (f"/api/alerts/{failed_id}/retry", None),
        ("/api/alerts/purge", {"older_than": "1h", "statuses": ["pending", "failed"]}),
        ("/api/alerts/purge", {"older_than": "1h"}),
        ("/api/breakers/fresh/trip", {"reason": "no token"}),
        ("/api/breakers/held/reset", {"reason": "no token"}),
    ]
    wrong = [
        {},
        {"Authorization": "Bearer not-the-token"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": TOKEN},
    ]
    async with serve(settings, session_factory) as (client, _):
        for path, body in mutations:
            for headers in wrong:
                response = await client.post(path, json=body, headers=headers)
                assert response.status_code == 401, (path, headers, response.text)
                assert response.headers["www-authenticate"] == "Bearer"
                assert "ALERTQ_API_TOKEN" in response.json()["detail"]
    disabled = settings.model_copy(update={"api_token": None})
    async with serve(disabled, session_factory) as (client, _):
        for path, body in mutations:
            response = await client.post(path, json=body, headers=AUTH)
            assert response.status_code == 403, (path, response.text)
            assert "disabled" in response.json()["detail"]
            assert "ALERTQ_API_TOKEN" in response.json()["detail"]
    assert await statuses(session_factory) == before
    assert await breaker.get_state("fresh") is None
    held = await breaker.get_state("held")
    assert held is not None and held.disabled


# --------------------------------------------------------------------------- mutations


async def test_retry_failed_and_retry_one_put_failed_rows_back(
    db_url: str, session_factory: Factory, stub: StubAlertmanager
) -> None:
    settings = api_settings(db_url, stub.url)
    first, second, third = await fail(settings, session_factory, stub, "F1", "F2", "F3")
    (pending,) = await enqueue(session_factory, "P")
    async with serve(settings, session_factory) as (client, _):
        allowed = (await client.get(f"/api/alerts/{second}")).json()["max_attempts"]
        one = await client.post(f"/api/alerts/{first}/retry", json={"max_retries": 1}, headers=AUTH)
        assert one.status_code == 200 and one.json() == {"requeued": 1}
        assert (await statuses(session_factory))[first] == "pending"
        again = await client.post(f"/api/alerts/{first}/retry", headers=AUTH)
        assert again.status_code == 409 and "pending" in again.json()["detail"]
        not_failed = await client.post(f"/api/alerts/{pending}/retry", headers=AUTH)
        assert not_failed.status_code == 409
        missing = await client.post(f"/api/alerts/{third + 100}/retry", headers=AUTH)
        assert missing.status_code == 404
        rest = await client.post("/api/alerts/retry-failed", json={"max_retries": 2}, headers=AUTH)
        assert rest.status_code == 200 and rest.json() == {"requeued": 2}
    after = await statuses(session_factory)
    assert after[second] == after[third] == "pending"
    async with transaction(session_factory) as s:
        row = await get_alert_driver(s).alerts_get(second)
        assert row is not None and row.max_attempts == allowed + 2


async def test_purge_deletes_old_finished_rows_and_refuses_pending(
    db_url: str, session_factory: Factory, stub: StubAlertmanager
) -> None:
    settings = api_settings(db_url, stub.url)
    old = datetime.now(UTC) - timedelta(hours=3)
    old_sent = await enqueue(session_factory, "OldSent1", "OldSent2", now=old)
    probe = AlertmanagerClient.from_settings(settings)
    try:
        assert await AlertWorker(settings, session_factory).run_once(probe) == 2
    finally:
        await probe.aclose()
    (recent,) = await fail(settings, session_factory, stub, "RecentFailure")
    (old_pending,) = await enqueue(session_factory, "OldPending", now=old)
    assert set((await statuses(session_factory)).values()) == {"sent", "pending", "failed"}
    async with serve(settings, session_factory) as (client, _):
        refused = await client.post(
            "/api/alerts/purge",
            json={"older_than": "1h", "statuses": ["sent", "pending"]},
            headers=AUTH,
        )
        assert refused.status_code == 422
        assert "refusing to purge pending rows" in refused.text
        assert len(await statuses(session_factory)) == 4
        response = await client.post(
            "/api/alerts/purge",
            json={"older_than": "1h", "statuses": ["sent", "failed"]},
            headers=AUTH,
        )
        assert response.status_code == 200, response.text
        assert response.json()["deleted"] == 2
    assert await statuses(session_factory) == {old_pending: "pending", recent: "failed"}
    assert not set(old_sent) & set(await statuses(session_factory))


async def test_breakers_trip_and_reset_through_the_api(
    db_url: str, session_factory: Factory
) -> None:
    settings = api_settings(db_url)
    async with serve(settings, session_factory) as (client, _):
        tripped = await client.post(
            "/api/breakers/costsim_v2/trip",
            json={"reason": "drift by hand", "until": "2h"},
            headers=AUTH,
        )
        assert tripped.status_code == 200, tripped.text
        body = tripped.json()
        assert body["open"] is True and body["disabled_reason"] == "drift by hand"
        until = datetime.fromisoformat(body["disabled_until"])
        assert timedelta(minutes=119) < until - datetime.now(UTC) <= timedelta(hours=2)
        assert body["disabled_by"].startswith("api@")

        listed = (await client.get("/api/breakers")).json()
        assert [(b["name"], b["open"]) for b in listed] == [("costsim_v2", True)]
        incidents = (await client.get("/api/incidents")).json()
        assert [(i["circuit_breaker_name"], i["resolved"]) for i in incidents] == [
            ("costsim_v2", False)
        ]
        assert incidents[0]["id"] == body["incident_id"]
        firing = (await client.get("/api/alerts", params={"status": "pending"})).json()["items"]
        assert [a["incident_id"] for a in firing] == [body["incident_id"]]
        metrics_text = (await client.get("/metrics")).text
        assert 'alertq_breaker_open{breaker="costsim_v2"} 1.0' in metrics_text

        reset = await client.post(
            "/api/breakers/costsim_v2/reset", json={"reason": "fixed"}, headers=AUTH
        )
        assert reset.status_code == 200 and reset.json()["open"] is False
        assert (await client.get("/api/incidents")).json() == []
        history = (await client.get("/api/incidents", params={"include_resolved": "true"})).json()
        assert history[0]["resolved"] is True and history[0]["resolution_notes"] == "fixed"
        metrics_text = (await client.get("/metrics")).text
        assert 'alertq_breaker_open{breaker="costsim_v2"} 0.0' in metrics_text
        assert "alertq_open_incidents 0.0" in metrics_text

        unknown = await client.post("/api/breakers/never_seen/reset", headers=AUTH)
        assert unknown.status_code == 404
    assert await CircuitBreaker(settings, session_factory).get_state("never_seen") is None


@pytest.mark.parametrize(
    ("method", "path", "body", "expected"),
    [
        ("post", "/api/breakers/b/trip", {"reason": "x", "until": "forever"}, "invalid duration"),
        ("post", "/api/breakers/b/trip", {"reason": "x", "until": "1e300"}, "invalid duration"),
        ("post", "/api/breakers/b/trip", {"reason": "x", "until": "0s"}, "invalid duration"),
        ("post", "/api/breakers/b/trip", {"reason": "x", "until": "99999d"}, "invalid duration"),
        ("post", "/api/breakers/b/trip", {"reason": "   "}, "blank"),
        ("post", "/api/breakers/b/trip", {"reason": "nul\u0000byte"}, "NUL"),
        ("post", "/api/breakers/b/trip", {}, "reason"),
        ("post", "/api/breakers/b%20c/trip", {"reason": "x"}, "pattern"),
        ("post", "/api/alerts/retry-failed", {"max_retries": 0}, "max_retries"),
        ("post", "/api/alerts/retry-failed", {"max_retries": True}, "max_retries"),
        ("post", "/api/alerts/purge", {"older_than": "-5d"}, "invalid duration"),
        ("post", "/api/alerts/purge", {"older_than": "inf"}, "invalid duration"),
        ("post", "/api/alerts/purge", {"older_than": "1d", "statuses": []}, "statuses"),
        ("post", "/api/alerts/purge", {"older_than": "1d", "statuses": ["gone"]}, "statuses"),
        ("get", "/api/alerts/0", None, "alert_id"),
        ("get", f"/api/alerts/{2**70}", None, "alert_id"),
        ("get", "/api/alerts?limit=100000", None, "limit"),
        ("get", "/api/alerts?status=lost", None, "status"),
    ],
)
async def test_bad_input_is_a_422_that_says_what_is_wrong(
    db_url: str, session_factory: Factory, method: str, path: str, body: Any, expected: str
) -> None:
    async with serve(api_settings(db_url), session_factory) as (client, _):
        if method == "post":
            response = await client.post(path, json=body, headers=AUTH)
        else:
            response = await client.get(path)
    assert response.status_code == 422, response.text
    assert expected in response.text
    assert await CircuitBreaker(api_settings(db_url), session_factory).get_state("b") is None


async def test_a_body_that_is_not_json_is_a_422(db_url: str, session_factory: Factory) -> None:
    async with serve(api_settings(db_url), session_factory) as (client, _):
        response = await client.post(
            "/api/breakers/b/trip",
            content=b"{not json",
            headers={**AUTH, "Content-Type": "application/json"},
        )
    assert response.status_code == 422
    assert "json" in response.text.lower()


# --------------------------------------------------------------------------- probes


async def test_readyz_needs_the_database_and_one_ready_alertmanager(
    db_url: str, session_factory: Factory, stub: StubAlertmanager
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    settings = api_settings(db_url, dead, stub.url)
    async with serve(settings, session_factory) as (client, context):
        assert (await client.get("/healthz")).status_code == 200
        unchecked = await client.get("/readyz")
        assert unchecked.status_code == 503
        assert "no Alertmanager readiness check" in unchecked.json()["reasons"][0]

        stub.set_ready(False)
        probe = AlertmanagerClient.from_settings(settings)
        try:
            context.record_health(await probe.check_ready())
            down = await client.get("/readyz")
            assert down.status_code == 503
            assert "no Alertmanager is ready" in down.json()["reasons"][0]
            assert "connection refused" in down.json()["reasons"][0]
            stub.set_ready(True)
            context.record_health(await probe.check_ready())
        finally:
            await probe.aclose()
        ready = await client.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["database"] == "ok"
        by_target = {a["target"]: a["ready"] for a in ready.json()["alertmanagers"]}
        assert by_target == {dead: False, stub.url: True}
        assert (
            f'alertq_alertmanager_up{{alertmanager="{stub.url}"}} 1.0'
            in (await client.get("/metrics")).text
        )


async def test_an_unreachable_database_is_a_503_not_a_500(tmp_path: Path) -> None:
    url = f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/nowhere"
    settings = api_settings(url)
    engine = create_engine(settings)
    try:
        factory = create_session_factory(engine)
        async with serve(settings, factory) as (client, _):
            stats = await client.get("/api/stats")
            assert stats.status_code == 503
            assert stats.json()["detail"].startswith("database unavailable")
            listing = await client.get("/api/alerts")
            assert listing.status_code == 503
            ready = await client.get("/readyz")
            assert ready.status_code == 503 and "database" in ready.json()["reasons"][0]
            page = await client.get("/")
            assert page.status_code == 200 and "Database unreachable" in page.text
            assert (await client.get("/metrics")).status_code == 200
            assert (await client.get("/healthz")).status_code == 200
    finally:
        await engine.dispose()


# --------------------------------------------------------------------------- schemathesis

# schemathesis reads the schema from this app at import time (its lazy fixture loader does
# not run under pytest 9); the `schema_context` fixture then points the app at a seeded
# database before any case runs.
# schemathesis's ASGI client sends Host: testserver.
_PLACEHOLDER = api_settings("sqlite+aiosqlite:///:memory:", allowed_hosts=["testserver"])
SCHEMA_APP = create_app(
    OpsContext(_PLACEHOLDER, create_session_factory(create_engine(_PLACEHOLDER)))
)
schema = schemathesis.openapi.from_asgi("/openapi.json", SCHEMA_APP)
# The front door refuses oversize bodies (413) and request targets (414) before any
# route validates them: rejections too (docs/security.md).
schema.config.checks.negative_data_rejection.expected_statuses += ["413", "414"]


@pytest.fixture(scope="module")
def schema_context(
    tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path
) -> Iterator[OpsContext]:
    """A seeded SQLite file (failed and pending rows, an open breaker) and a ready
    Alertmanager behind the app. schemathesis calls the app on its own event loop, so the
    engine pools no connections."""
    path = tmp_path_factory.mktemp("schemathesis") / "alertq.db"
    shutil.copy(sqlite_template, path)
    with StubAlertmanager() as stub:
        settings = api_settings(
            f"sqlite+aiosqlite:///{path}", stub.url, allowed_hosts=["testserver"]
        )
        engine = create_engine(settings, poolclass=NullPool)
        factory = create_session_factory(engine)
        context = OpsContext(settings, factory)

        async def seed() -> None:
            await fail(settings, factory, stub, "Seed1", "Seed2")
            await enqueue(factory, "Seed3", "Seed4")
            await CircuitBreaker(settings, factory).disable("seeded", "seed", "test")
            probe = AlertmanagerClient.from_settings(settings)
            try:
                context.record_health(await probe.check_ready())
            finally:
                await probe.aclose()

        asyncio.run(seed())
        previous = SCHEMA_APP.state.context
        SCHEMA_APP.state.context = context
        try:
            yield context
        finally:
            SCHEMA_APP.state.context = previous
            asyncio.run(engine.dispose())


@schema.parametrize()
@hypothesis_settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_api_never_answers_a_server_error(case: Any, schema_context: OpsContext) -> None:
    case.call_and_validate(headers=AUTH)
