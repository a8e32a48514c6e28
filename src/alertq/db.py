"""Builds the async engine and session factory, and owns the one helper that commits.

Layers below (the driver) take the session they are given and never commit; layers above
(engine, breaker, CLI, API) open their transactions with :func:`transaction`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
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
