"""A worker whose database cannot be reached: capped backoff, a few log lines, no tracebacks,
and ``--drain`` gives up after a bounded wait."""

from __future__ import annotations

import asyncio
import logging
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy import event
from sqlalchemy.engine import make_url

import alertq.db
from alertq.config import Settings
from alertq.db import (
    DatabaseOutage,
    DatabaseUnreachable,
    create_engine,
    create_session_factory,
    is_database_error,
)
from alertq.driver import get_queue_driver
from alertq.engine import AlertWorker
from tests.conftest import _truncate
from tests.integration.test_engine import enqueue_many, once, worker_settings
from tests.support import free_port
from tests.support.processes import wait_until
from tests.support.stub import StubAlertmanager


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def refused_url() -> str:
    return f"postgresql+asyncpg://alertq:s3cret-pw@127.0.0.1:{free_port()}/alertq"


def outage_settings(url: str) -> Settings:
    return Settings(
        database_url=url,
        alertmanager_urls=["http://127.0.0.1:9"],
        concurrency=2,
        poll_interval=0.05,
        resend_interval=0.25,  # keep-alive passes every 50 ms: they must stay quiet too
    )


def alertq_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """alertq's INFO+ lines, less the worker's one start line ("N delivery loops")."""
    records = [r for r in caplog.records if r.name.startswith("alertq")]
    starts = [r for r in records if "delivery loop" in r.getMessage()]
    assert len(starts) <= 1, [r.getMessage() for r in starts]
    return [r for r in records if r.levelno >= logging.INFO and r not in starts]


async def test_worker_on_a_refused_port_backs_off_and_logs_one_line_without_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    settings = outage_settings(refused_url())
    engine = create_engine(settings)
    worker = AlertWorker(settings, create_session_factory(engine))
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        await asyncio.wait_for(asyncio.shield(task), 3.0)
    except TimeoutError:
        pass  # still running after 3 s, as it should
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        await engine.dispose()
    lines = alertq_lines(caplog)
    text = "\n".join(r.getMessage() for r in lines)
    assert [r for r in lines if r.exc_info] == [], text
    assert "Traceback" not in caplog.text
    down = [r for r in lines if "unreachable" in r.getMessage()]
    assert len(down) == 1, text
    assert len(lines) == 1, text
    assert "s3cret-pw" not in caplog.text and "***" in down[0].getMessage()
    # Capped exponential backoff from 50 ms: a handful of attempts per loop, not 60.
    assert worker.outage.failures <= 20, worker.outage.failures


async def test_worker_logs_once_a_minute_while_down_and_once_when_back(
    caplog: pytest.LogCaptureFixture, sqlite_template: Path, tmp_path: Path
) -> None:
    caplog.set_level(logging.INFO)
    missing = tmp_path / "not-yet"
    settings = outage_settings(f"sqlite+aiosqlite:///{missing / 'alertq.db'}")
    monotonic = FakeMonotonic()
    engine = create_engine(settings)
    worker = AlertWorker(
        settings,
        create_session_factory(engine),
        outage=DatabaseOutage(settings.database_url, monotonic=monotonic),
    )
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        await wait_until(lambda: worker.outage.failures >= 3, within=20)
        monotonic.now += 30  # half a minute: still no second line
        seen = worker.outage.failures
        await wait_until(lambda: worker.outage.failures >= seen + 2, within=30)
        assert len(alertq_lines(caplog)) == 1
        monotonic.now += 31  # past a minute since the first line
        seen = worker.outage.failures
        await wait_until(lambda: worker.outage.failures >= seen + 2, within=30)
        assert len(alertq_lines(caplog)) == 2
        # The database comes back: a migrated file appears where the URL points.
        missing.mkdir()
        shutil.copy(sqlite_template, missing / "alertq.db")
        await wait_until(lambda: not worker.outage.down, within=30)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        await engine.dispose()
    lines = alertq_lines(caplog)
    messages = [r.getMessage() for r in lines]
    assert len(lines) == 3, messages
    assert "unreachable" in messages[0] and "still unreachable" in messages[1]
    assert "reachable again" in messages[2]
    assert [r for r in lines if r.exc_info] == []


async def test_drain_gives_up_with_database_unreachable_after_a_bounded_wait() -> None:
    settings = outage_settings(refused_url())
    engine = create_engine(settings)
    worker = AlertWorker(settings, create_session_factory(engine), drain_unreachable_limit=1.0)
    try:
        with pytest.raises(DatabaseUnreachable) as caught:
            await asyncio.wait_for(worker.run(asyncio.Event(), drain=True), 30)
    finally:
        await engine.dispose()
    message = str(caught.value)
    assert "\n" not in message and "s3cret-pw" not in message
    assert "127.0.0.1" in message and "ConnectionRefusedError" in message


async def test_drain_waits_out_the_default_bound_then_gives_up() -> None:
    """Without the test-only bound: the default is finite, so ``--drain`` always ends."""
    settings = outage_settings(refused_url())
    engine = create_engine(settings)
    worker = AlertWorker(settings, create_session_factory(engine))
    try:
        with pytest.raises(DatabaseUnreachable):
            await asyncio.wait_for(worker.run(asyncio.Event(), drain=True), 60)
    finally:
        await engine.dispose()


@pytest.fixture
def pg_url(pg_database_url: str) -> str:
    """The session's PostgreSQL database, emptied (the test is about PostgreSQL backends)."""
    asyncio.run(_truncate(pg_database_url))
    return pg_database_url


@pytest.mark.parametrize("ping_after_rest", [3600.0, 0.0], ids=["closed-flag", "ping"])
async def test_connections_the_server_ended_are_replaced_before_a_cycle_uses_them(
    pg_url: str, stub: StubAlertmanager, monkeypatch: pytest.MonkeyPatch, ping_after_rest: float
) -> None:
    # What a PostgreSQL restart does to a worker's pool: every pooled backend is ended. The
    # next cycle must get live connections (no failed cycle, no batch left leased), with
    # no round trip per checkout: a connection whose close was read is replaced at once
    # (closed-flag); one that rested is pinged first (ping: every checkout pings).
    db_url = pg_url
    monkeypatch.setattr(alertq.db, "PING_AFTER_REST", ping_after_rest)
    settings = worker_settings(db_url, stub.url)
    engine = create_engine(settings)
    pooled: list[Any] = []
    event.listen(
        engine.sync_engine, "connect", lambda conn, _r: pooled.append(conn.driver_connection)
    )
    factory = create_session_factory(engine)
    worker = AlertWorker(settings, factory)
    try:
        await enqueue_many(factory, 2)
        assert await once(worker) == 2
        admin = await asyncpg.connect(
            make_url(db_url).set(drivername="postgresql").render_as_string(hide_password=False)
        )
        try:
            ended = await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        finally:
            await admin.close()
        assert ended >= 1
        if ping_after_rest > 60:
            await wait_until(
                lambda: all(c.is_closed() for c in pooled),
                within=10,
                message="asyncpg did not see the server close its connections",
            )
        await enqueue_many(factory, 2, prefix="B")
        assert await once(worker) == 2
        assert worker.stats.sent == 4 and worker.stats.fenced == 0
        assert len(stub.received_alerts()) == 4
    finally:
        await engine.dispose()


@pytest.mark.parametrize("seen", [True, False], ids=["close-read", "close-unread"])
async def test_a_backend_ended_under_the_drivers_asyncpg_path_is_a_database_error(
    pg_url: str, seen: bool
) -> None:
    # The claim and the record run asyncpg under the session (driver.sql.pg_connection),
    # past SQLAlchemy's error wrapping: a PostgreSQL restart between a cycle's checkout
    # and its first statement raised asyncpg's or the adapter's own error, which the
    # worker took for a bug in alertq (ERROR with a traceback, no outage, no backoff).
    engine = create_engine(Settings(database_url=pg_url))
    factory = create_session_factory(engine)
    now = datetime.now(UTC)
    try:
        async with factory() as session:
            raw = await (await session.connection()).get_raw_connection()
            driver_conn: Any = raw.driver_connection
            admin = await asyncpg.connect(
                make_url(pg_url).set(drivername="postgresql").render_as_string(hide_password=False)
            )
            try:
                await admin.execute("SELECT pg_terminate_backend($1)", driver_conn.get_server_pid())
            finally:
                await admin.close()
            if seen:
                await wait_until(driver_conn.is_closed, within=10, message="close never read")
            with pytest.raises(Exception) as caught:
                await get_queue_driver(session).alerts_claim(
                    now, 10, now + timedelta(seconds=30), 1, "w"
                )
    finally:
        await engine.dispose()
    assert is_database_error(caught.value), repr(caught.value)
