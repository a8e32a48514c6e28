"""How pooled PostgreSQL connections are checked before use (``db._check_on_checkout``):
a connection in steady use runs no ping, one the server closed is replaced without an
error, and one idle for long is pinged."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine

from alertq import db
from alertq.config import Settings
from alertq.db import create_engine, create_session_factory, transaction


@pytest.fixture
async def pg_engine(pg_database_url: str) -> AsyncIterator[tuple[AsyncEngine, list[str]]]:
    """An engine of one pooled connection, and every query its connections ran."""
    engine = create_engine(Settings(database_url=pg_database_url), pool_size=1, max_overflow=0)
    queries: list[str] = []

    def log_queries(_dbapi: Any, record: Any) -> None:
        record.driver_connection.add_query_logger(lambda q: queries.append(q.query))

    event.listen(engine.sync_engine, "connect", log_queries)
    yield engine, queries
    await engine.dispose()


async def _backend_pid(engine: AsyncEngine) -> int:
    async with transaction(create_session_factory(engine)) as session:
        return int(await session.scalar(text("SELECT pg_backend_pid()")))


async def test_a_connection_in_steady_use_runs_no_ping(
    pg_engine: tuple[AsyncEngine, list[str]],
) -> None:
    engine, queries = pg_engine
    pids = {await _backend_pid(engine) for _ in range(5)}
    assert len(pids) == 1  # the same pooled connection every time
    # pool_pre_ping ran BEGIN, ";" and ROLLBACK before each of the last four.
    assert ";" not in queries, queries


async def test_an_idle_connection_is_pinged_before_use(
    pg_engine: tuple[AsyncEngine, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    engine, queries = pg_engine
    await _backend_pid(engine)
    monkeypatch.setattr(db, "PING_AFTER_REST", -1.0)  # every connection "idle"
    await _backend_pid(engine)
    assert ";" in queries, queries


async def test_a_connection_the_server_closed_is_replaced_without_an_error(
    pg_engine: tuple[AsyncEngine, list[str]], pg_database_url: str
) -> None:
    engine, _ = pg_engine
    pid = await _backend_pid(engine)
    closed = asyncio.Event()
    async with engine.connect() as conn:  # the pooled connection, to watch it close
        driver = (await conn.get_raw_connection()).driver_connection
        assert driver is not None
        driver.add_termination_listener(lambda _c: closed.set())
    admin = await asyncpg.connect(pg_database_url.replace("+asyncpg", ""))
    try:
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
    finally:
        await admin.close()
    await closed.wait()  # the event loop has seen the socket close
    assert await _backend_pid(engine) != pid
