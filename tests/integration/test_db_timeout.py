"""PostgreSQL behind a network path that silently drops packets (a frozen in-process TCP
proxy): every wait is bounded by ``ALERTQ_DB_TIMEOUT``, readiness answers within a few
seconds, and a worker cycle that times out loses nothing. Readiness asks the database
live, not the stats cache."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Iterator
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import httpx
import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession

from alertq.breaker import INCIDENT_RECORD_HOOK
from alertq.config import Settings
from alertq.db import create_engine, create_session_factory, is_database_error
from alertq.engine import AlertWorker
from alertq.opsview import READY_REUSE, OpsContext
from tests.conftest import _truncate
from tests.integration.test_api import api_settings, serve
from tests.integration.test_engine import enqueue_many, rows, worker_settings
from tests.integration.test_status_page import check_health
from tests.support.clock import FakeClock
from tests.support.processes import wait_until
from tests.support.stub import StubAlertmanager
from tests.support.tcpproxy import FreezableProxy

T = TypeVar("T")

PROBE_BOUND = 3.5
"""Seconds a readiness probe may take to say the database does not answer: a few, as a
Kubernetes probe expects (alertq waits 2 s; the rest is slack for a busy machine)."""
HANG = 15.0
"""Seconds after which a wait on a frozen path counts as a hang (the test then thaws the
path, so that what hung can finish, and fails)."""


@pytest.fixture
def pg_url(pg_database_url: str) -> str:
    asyncio.run(_truncate(pg_database_url))
    return pg_database_url


def through(url: str, proxy: FreezableProxy) -> str:
    return make_url(url).set(host="127.0.0.1", port=proxy.port).render_as_string(False)


async def within(what: Awaitable[T], seconds: float, proxy: FreezableProxy) -> tuple[T, float]:
    """``what``'s result and how long it took; fails if it takes longer than ``seconds``."""
    started = time.monotonic()
    task = asyncio.ensure_future(what)
    done, _ = await asyncio.wait({task}, timeout=seconds)
    if not done:
        proxy.thaw()  # let it finish rather than leave it hanging
        await asyncio.wait_for(task, 60)
        pytest.fail(f"no answer within {seconds}s while the path to PostgreSQL was frozen")
    return task.result(), time.monotonic() - started


async def mark_ready(settings: Settings, context: Any) -> None:
    """Record a real readiness check of the (ready) stub, so only the database decides."""
    await check_health(context, settings)
    assert context.any_ready


@asynccontextmanager
async def ready_app_behind_proxy(
    pg_url: str, stub: StubAlertmanager
) -> AsyncIterator[tuple[FreezableProxy, httpx.AsyncClient, FakeClock]]:
    """The ops app, its database behind a freezable proxy (default ``ALERTQ_DB_TIMEOUT``),
    a ready Alertmanager and a fake clock; the path is thawed on the way out."""
    async with FreezableProxy("127.0.0.1", make_url(pg_url).port or 5432) as proxy:
        settings = api_settings(through(pg_url, proxy), stub.url)
        engine = create_engine(settings)
        clock = FakeClock()
        try:
            async with serve(settings, create_session_factory(engine), clock=clock) as (
                client,
                context,
            ):
                await mark_ready(settings, context)
                yield proxy, client, clock
        finally:
            proxy.thaw()
            await engine.dispose()


@pytest.mark.timeout(120)
async def test_readiness_answers_503_within_seconds_on_a_frozen_path_and_200_after(
    pg_url: str, stub: StubAlertmanager
) -> None:
    # The default ALERTQ_DB_TIMEOUT: the probes' bound is their own, shorter one.
    async with ready_app_behind_proxy(pg_url, stub) as (proxy, client, clock):
        assert (await client.get("/readyz")).status_code == 200
        assert (await client.get("/-/ready")).text == "OK"

        proxy.freeze()
        clock.advance(READY_REUSE.total_seconds())  # the last success is too old
        for path in ("/readyz", "/-/ready", "/readyz"):
            response: httpx.Response
            response, took = await within(client.get(path), HANG, proxy)
            assert response.status_code == 503, (path, response.text)
            assert took < PROBE_BOUND, (path, took)
            if path == "/readyz":
                assert response.json()["database"].startswith("unavailable: ")
            else:
                assert response.text.startswith("not ready: database unavailable")

        proxy.thaw()

        async def ready_again() -> bool:
            readyz, relay = await client.get("/readyz"), await client.get("/-/ready")
            return readyz.status_code == 200 and relay.status_code == 200

        await wait_until(ready_again, within=30, message="not ready after the thaw")


@pytest.mark.timeout(120)
async def test_a_worker_cycle_on_a_frozen_path_fails_in_time_and_its_rows_are_resent(
    pg_url: str, stub: StubAlertmanager
) -> None:
    direct = create_engine(Settings(database_url=pg_url))
    direct_factory = create_session_factory(direct)
    await enqueue_many(direct_factory, 5)
    async with FreezableProxy("127.0.0.1", make_url(pg_url).port or 5432) as proxy:
        settings = worker_settings(
            through(pg_url, proxy),
            stub.url,
            db_timeout=1.0,
            alertmanager_timeout=1.0,
            lease_seconds=3.0,
        )
        froze_at: list[float] = []

        async def freeze_mid_record(_session: AsyncSession, _recorded: Any, _now: datetime) -> None:
            # The path drops mid-transaction: the cycle's remaining statements (the next
            # claim, the COMMIT) get no answer, and its outcomes are never committed.
            if not froze_at:
                froze_at.append(time.monotonic())
                proxy.freeze()

        hooks: tuple[Any, ...] = (INCIDENT_RECORD_HOOK, freeze_mid_record)
        engine = create_engine(settings)
        worker = AlertWorker(settings, create_session_factory(engine), record_hooks=hooks)
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        try:
            await wait_until(
                lambda: worker.outage.failures >= 1,
                within=HANG,
                message="the cycle on the frozen path never failed: it hangs",
            )
            # A statement's timeout, then asyncpg's cancel request (bounded the same way).
            failed_after = time.monotonic() - froze_at[0]
            assert failed_after < 3 * settings.db_timeout + 1.5, failed_after
            assert "TimeoutError" in worker.outage.last_error, worker.outage.last_error
            assert worker.stats.sent == 0  # the frozen cycle recorded nothing
            proxy.thaw()

            async def all_sent() -> bool:
                return {r.status for r in (await rows(direct_factory)).values()} == {"sent"}

            await wait_until(all_sent, within=30, message="rows lost after the timeout")
        finally:
            proxy.thaw()
            stop.set()
            await asyncio.wait_for(task, 30)
            await engine.dispose()
            await direct.dispose()
    # The worker went on: it took the rows back when their lease ran out and sent them.
    assert worker.stats.reclaimed >= 5 and worker.stats.sent == 5
    assert {a["labels"]["alertname"] for a in stub.received_alerts()} == {f"A{i}" for i in range(5)}


@pytest.fixture
def login_role(pg_url: str) -> Iterator[str]:
    """A PostgreSQL role that may log in and read alertq's tables; dropped afterwards."""
    role = f"alertq_probe_{uuid.uuid4().hex[:8]}"
    asyncio.run(
        _as_admin(
            pg_url,
            f"CREATE ROLE {role} LOGIN",
            f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}",
        )
    )
    yield role
    asyncio.run(
        _as_admin(
            pg_url,
            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'",
            f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {role}",
            f"DROP ROLE {role}",
        )
    )


async def _as_admin(url: str, *statements: str) -> None:
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


async def test_readyz_asks_the_database_now_not_the_stats_cache(
    pg_url: str, login_role: str, stub: StubAlertmanager
) -> None:
    url = make_url(pg_url).set(username=login_role).render_as_string(False)
    settings = api_settings(url, stub.url, stats_cache_seconds=3600)
    engine = create_engine(settings)
    clock = FakeClock()
    try:
        async with serve(settings, create_session_factory(engine), clock=clock) as (
            client,
            context,
        ):
            await mark_ready(settings, context)
            assert (await client.get("/api/stats")).status_code == 200  # cached for an hour
            ready = await client.get("/readyz")
            assert ready.status_code == 200 and ready.json()["database"] == "ok"
            # PostgreSQL now refuses this role's logins, and ends its sessions.
            await _as_admin(
                pg_url,
                f"ALTER ROLE {login_role} NOLOGIN",
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                f" WHERE usename = '{login_role}'",
            )
            clock.advance(READY_REUSE.total_seconds())  # past the last success's reuse
            seen: list[str] = []

            async def refused() -> bool:
                response = await client.get("/readyz")
                seen.append(response.json()["database"])
                return "not permitted to log in" in seen[-1]

            await wait_until(refused, within=10, message=lambda: f"readyz said {sorted(set(seen))}")
            assert "ok" not in seen, seen  # not one answer from the cache
            relay = await client.get("/-/ready")
            assert relay.status_code == 503 and "not permitted to log in" in relay.text
    finally:
        await engine.dispose()


async def test_db_timeout_comes_from_the_environment_and_bounds_each_statement(
    pg_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("ALERTQ_CONFIG_FILE", str(tmp_path / "none.toml"))
    monkeypatch.setenv("ALERTQ_DATABASE_URL", pg_url)
    for bad in ("0", "-1", "3601", "soon"):
        monkeypatch.setenv("ALERTQ_DB_TIMEOUT", bad)
        with pytest.raises(ValueError, match="db_timeout"):
            Settings()
    monkeypatch.setenv("ALERTQ_DB_TIMEOUT", "0.5")
    settings = Settings()
    assert settings.db_timeout == 0.5
    engine = create_engine(settings)
    try:
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT 1"))).scalar() == 1
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                await conn.execute(text("SELECT pg_sleep(5)"))
            assert time.monotonic() - started < 2.5
    finally:
        await engine.dispose()


@pytest.mark.timeout(120)
async def test_disposing_the_pool_on_a_frozen_path_neither_waits_per_connection_nor_logs_tracebacks(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with FreezableProxy("127.0.0.1", make_url(pg_url).port or 5432) as proxy:
        settings = Settings(database_url=through(pg_url, proxy), db_timeout=4.0)
        engine = create_engine(settings)
        try:
            # Three pooled connections, as a stopping `alertq run` holds after some traffic.
            held = [await engine.connect() for _ in range(3)]
            for conn in held:
                assert (await conn.execute(text("SELECT 1"))).scalar() == 1
            for conn in held:
                await conn.close()
            proxy.freeze()
            # Shutdown disposes the pool: asyncpg's graceful close waited for the server's
            # goodbye up to ALERTQ_DB_TIMEOUT per connection, one after another.
            _, took = await within(engine.dispose(), HANG, proxy)
        finally:
            proxy.thaw()
            await engine.dispose()
    assert took < settings.db_timeout, took
    # SQLAlchemy's pool and alertq only: the proxy's own teardown may log through asyncio.
    ours = [r for r in caplog.records if r.name.startswith(("sqlalchemy", "alertq"))]
    logged = [r for r in ours if r.levelno >= logging.WARNING or r.exc_info]
    assert not logged, [r.getMessage() for r in logged]


@pytest.mark.timeout(120)
async def test_a_successful_check_answers_probes_for_a_second_and_no_longer(
    pg_url: str, stub: StubAlertmanager
) -> None:
    # An unauthenticated probe flood costs PostgreSQL one round trip a second; a failure is
    # never reused, and a success no longer than READY_REUSE.
    async with ready_app_behind_proxy(pg_url, stub) as (proxy, client, clock):
        assert (await client.get("/-/ready")).status_code == 200
        proxy.freeze()
        clock.advance(READY_REUSE.total_seconds() / 2)
        for path in ("/-/ready", "/readyz"):  # no round trip: the path is frozen
            response, took = await within(client.get(path), PROBE_BOUND, proxy)
            assert response.status_code == 200 and took < 1.0, (path, response.text)
        clock.advance(READY_REUSE.total_seconds() / 2)
        response, took = await within(client.get("/-/ready"), HANG, proxy)
        assert response.status_code == 503 and took < PROBE_BOUND, response.text


async def test_readiness_asks_through_its_own_connection_when_every_pooled_one_is_busy(
    pg_url: str, stub: StubAlertmanager
) -> None:
    # A burst that holds every pooled connection is not "database unavailable".
    settings = api_settings(pg_url, stub.url, db_timeout=5.0)
    engine = create_engine(settings, pool_size=1, max_overflow=0)
    probe_engine = create_engine(settings, pool_size=1, max_overflow=0)
    factory = create_session_factory(engine)
    try:
        async with engine.connect() as held:  # the pool's only connection, busy
            await held.execute(text("SELECT 1"))
            shared = OpsContext(settings, factory)
            answer = await shared.check_database()
            assert answer is not None and "no answer within" in answer  # the old wiring
            own = OpsContext(settings, factory, probe_factory=create_session_factory(probe_engine))
            assert await own.check_database() is None
    finally:
        await engine.dispose()
        await probe_engine.dispose()


async def test_a_request_waits_for_a_pooled_connection_no_longer_than_db_timeout(
    pg_url: str,
) -> None:
    settings = Settings(database_url=pg_url, db_timeout=1.0)
    engine = create_engine(settings, pool_size=1, max_overflow=0)
    try:
        async with engine.connect() as held:
            await held.execute(text("SELECT 1"))
            started = time.monotonic()
            with pytest.raises(sa_exc.TimeoutError) as caught:
                async with engine.connect():
                    pass
            assert time.monotonic() - started < 3.0  # SQLAlchemy's own default is 30 s
            assert is_database_error(caught.value)
    finally:
        await engine.dispose()
