"""Builds the async engine and session factory, and owns the one helper that commits.

Layers below (the driver) take the session they are given and never commit; layers above
(engine, breaker, CLI, API) open their transactions with :func:`transaction`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from alertq.config import Settings
from alertq.driver import NOTIFY_CHANNEL

log = logging.getLogger("alertq.db")


class DatabaseUnreachable(RuntimeError):
    """The database could not be reached. ``str()`` is one line, safe to show: the URL with
    its password hidden and the cause's type and first line. The CLI prints it and exits 1."""


def redacted_url(database_url: str) -> str:
    """``database_url`` with any password replaced by ``***``, for messages and logs."""
    try:
        return make_url(database_url).render_as_string(hide_password=True)
    except Exception:
        return "<unparseable database URL>"


def _sqlite_pragmas(busy_timeout_ms: int) -> Any:
    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event, not the driver, start transactions.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    return on_connect


def _begin_immediate(conn: Any) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def create_engine(settings: Settings, **kwargs: Any) -> AsyncEngine:
    """An async engine for ``settings.database_url`` (aiosqlite or asyncpg).

    On SQLite every connection gets WAL, a busy timeout, ``synchronous=NORMAL`` and
    ``BEGIN IMMEDIATE`` transactions; on
    PostgreSQL connections are checked before use so a restarted server is ridden out.
    """
    url = make_url(settings.database_url)
    if url.get_backend_name() == "sqlite":
        engine = create_async_engine(url, **kwargs)
        event.listen(
            engine.sync_engine, "connect", _sqlite_pragmas(settings.sqlite_busy_timeout_ms)
        )
        # IMMEDIATE takes the write lock up front: SQLite's writers are serialised anyway, and
        # a deferred transaction that reads then writes fails with SQLITE_BUSY_SNAPSHOT
        # instead of waiting out the busy timeout.
        event.listen(engine.sync_engine, "begin", _begin_immediate)
        return engine
    if url.get_backend_name() == "postgresql" and url.get_driver_name() != "asyncpg":
        url = url.set(drivername="postgresql+asyncpg")
    kwargs.setdefault("pool_size", settings.db_pool_size)
    kwargs.setdefault("pool_pre_ping", True)
    return create_async_engine(url, **kwargs)


def create_session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions that keep loaded objects usable after commit."""
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


@asynccontextmanager
async def transaction(
    factory: async_sessionmaker[AsyncSession],
) -> AsyncIterator[AsyncSession]:
    """Open a session, begin, yield it, and commit, or roll back on any exception."""
    async with factory() as session, session.begin():
        yield session


class EnqueueListener:
    """LISTENs for enqueue notifications on PostgreSQL and calls ``on_notify``.

    Holds one dedicated asyncpg connection and reconnects by itself after the server
    restarts; every (re)connect also calls ``on_notify``, since notifications sent while
    disconnected are lost. Polling stays the fallback.
    """

    def __init__(self, database_url: str, on_notify: Callable[[], None]) -> None:
        url = make_url(database_url)
        self._dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
        self._on_notify = on_notify
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="alertq-listen")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        import asyncpg

        delay = 0.5
        while True:
            conn = None
            try:
                conn = await asyncpg.connect(self._dsn, timeout=10)
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _c, lost=lost: lost.set())
                await conn.add_listener(NOTIFY_CHANNEL, lambda *_a: self._on_notify())
                self._on_notify()
                delay = 0.5
                while not lost.is_set() and not conn.is_closed():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(lost.wait(), timeout=5)
                    if not lost.is_set():
                        await conn.execute("SELECT 1")  # detects a dead server
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("LISTEN connection lost (%s); reconnecting", type(exc).__name__)
            finally:
                if conn is not None and not conn.is_closed():
                    with contextlib.suppress(Exception):
                        await conn.close(timeout=2)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)
