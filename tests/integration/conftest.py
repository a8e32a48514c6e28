"""Fixtures of the driver contract (``test_driver_contract*.py``): one migrated database
per backend for each module, and sessions on it."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Iterator

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from alertq.config import Settings
from alertq.db import create_engine, create_session_factory
from tests.conftest import TABLES

Factory = async_sessionmaker[AsyncSession]


async def empty_tables(url: str) -> None:
    engine = create_engine(Settings(database_url=url))
    try:
        async with engine.begin() as conn:
            if url.startswith("sqlite"):
                for table in TABLES.split(", "):
                    await conn.execute(text(f"DELETE FROM {table}"))
            else:
                await conn.execute(text(f"TRUNCATE {TABLES} RESTART IDENTITY"))
    finally:
        await engine.dispose()


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def backend_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """One migrated, empty database per backend for the whole module."""
    if request.param == "sqlite":
        path = tmp_path_factory.mktemp("contract") / "alertq.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        return f"sqlite+aiosqlite:///{path}"
    url: str = request.getfixturevalue("pg_database_url")
    asyncio.run(empty_tables(url))
    return url


@pytest.fixture
async def contract_engine(backend_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(Settings(database_url=backend_url))
    yield engine
    await engine.dispose()


@pytest.fixture
async def tx(contract_engine: AsyncEngine) -> AsyncIterator[AsyncSession]:
    """A session in a transaction that is rolled back after the test."""
    async with create_session_factory(contract_engine)() as session:
        await session.begin()
        try:
            yield session
        finally:
            await session.rollback()


@pytest.fixture
def committed(backend_url: str, contract_engine: AsyncEngine) -> Iterator[Factory]:
    """A session factory whose commits stay; the tables are emptied after the test."""
    yield create_session_factory(contract_engine)
    asyncio.run(empty_tables(backend_url))


@pytest.fixture
def pg_committed(pg_database_url: str) -> Iterator[str]:
    """The PostgreSQL database for tests that need several connections; emptied after."""
    asyncio.run(empty_tables(pg_database_url))
    yield pg_database_url
    asyncio.run(empty_tables(pg_database_url))
