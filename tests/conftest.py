"""Shared fixtures: a migrated database on SQLite and on a real PostgreSQL.

Outside CI a missing PostgreSQL or Alertmanager skips its tests with one loud line; with
``CI=true`` it fails them instead, so CI can never pass by skipping.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from alertq.config import Settings
from alertq.db import create_engine, create_session_factory
from alertq.migrate import upgrade
from tests.support.alertmanager import AlertmanagerNotFound, AlertmanagerProcess
from tests.support.stub import StubAlertmanager

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
PG_ADMIN_URL = os.environ.get(
    "ALERTQ_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
)
TABLES = (
    "costsim_alert_queue, costsim_cb_incidents, costsim_cb_state, "
    "alertq_managed_alerts, alertq_heartbeats"
)


TIERS = ("unit", "integration", "acceptance")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test with its tier, the directory it sits in (``-m "not acceptance"``)."""
    for item in items:
        if item.path.parent.name in TIERS:
            item.add_marker(item.path.parent.name)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """With ``CI=true`` a skip of any kind fails its test: a test that skips in CI proves
    nothing, whichever helper or ``pytest.skip`` call skipped it."""
    outcome = yield
    fail_skip_in_ci(outcome.get_result(), in_ci=IN_CI)  # type: ignore[attr-defined]


def fail_skip_in_ci(report: Any, *, in_ci: bool) -> None:
    """Turn a skipped (not xfailed) test report into a failure when ``in_ci``."""
    if in_ci and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped in CI (CI=true fails skips): {report.longrepr}"


def unavailable(what: str, why: str) -> None:
    """Fail in CI, skip loudly elsewhere."""
    message = f"{what} unavailable: {why}"
    if IN_CI:
        pytest.fail(f"{message} (CI=true: failing instead of skipping)", pytrace=False)
    print(f"\n*** SKIPPING {what} tests: {why} ***")
    pytest.skip(message)


async def _admin(sql: str) -> None:
    engine = create_engine(Settings(database_url=PG_ADMIN_URL), isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(text(sql))
    finally:
        await engine.dispose()


@pytest.fixture(scope="session")
def pg_database_url() -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for this test session, dropped at the end."""
    name = f"alertq_test_{uuid.uuid4().hex[:10]}"
    try:
        asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        unavailable("PostgreSQL", f"{type(exc).__name__}: {exc}")
    url = make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    upgrade(url)
    yield url
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file, copied for each test that needs one."""
    path = tmp_path_factory.mktemp("sqlite-template") / "template.db"
    upgrade(f"sqlite+aiosqlite:///{path}")
    return path


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty, migrated database: each test runs on SQLite and PostgreSQL."""
    if request.param == "sqlite":
        path = tmp_path / "alertq.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        yield f"sqlite+aiosqlite:///{path}"
        return
    url = request.getfixturevalue("pg_database_url")
    asyncio.run(_truncate(url))
    yield url


async def _truncate(url: str) -> None:
    engine = create_engine(Settings(database_url=url))
    try:
        async with engine.begin() as conn:
            await conn.execute(text(f"TRUNCATE {TABLES} RESTART IDENTITY"))
    finally:
        await engine.dispose()


@pytest.fixture
def settings(db_url: str) -> Settings:
    return Settings(database_url=db_url)


@pytest.fixture
async def engine(settings: Settings) -> AsyncIterator[AsyncEngine]:
    eng = create_engine(settings)
    yield eng
    await eng.dispose()


@pytest.fixture
def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return create_session_factory(engine)


@pytest.fixture
async def session(
    session_factory: async_sessionmaker[AsyncSession],
) -> AsyncIterator[AsyncSession]:
    """A session inside a transaction that the test may commit or leave to roll back."""
    async with session_factory() as s:
        yield s


@pytest.fixture
def is_postgres(db_url: str) -> bool:
    return db_url.startswith("postgresql")


@pytest.fixture
def empty_pg_url() -> Iterator[str]:
    """An empty PostgreSQL database (no migrations), dropped after the test."""
    name = f"alertq_mig_{uuid.uuid4().hex[:10]}"
    try:
        asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        unavailable("PostgreSQL", f"{type(exc).__name__}: {exc}")
    yield make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=["sqlite", "postgres"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database (no migrations) on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}"
    return str(request.getfixturevalue("empty_pg_url"))


@pytest.fixture
def alertmanager() -> Iterator[AlertmanagerProcess]:
    """A real Alertmanager (Debian package) on a free port, stopped after the test."""
    try:
        am = AlertmanagerProcess(resolve_timeout="5m")
    except AlertmanagerNotFound as exc:
        unavailable("Alertmanager", str(exc))
    with am:
        yield am


@pytest.fixture
def alertmanager_factory() -> Iterator[Callable[..., AlertmanagerProcess]]:
    """Start real Alertmanagers with custom options (e.g. ``resolve_timeout="10s"``)."""
    started: list[AlertmanagerProcess] = []

    def make(**options: Any) -> AlertmanagerProcess:
        try:
            am = AlertmanagerProcess(**options)
        except AlertmanagerNotFound as exc:
            unavailable("Alertmanager", str(exc))
        started.append(am)
        return am.start()

    yield make
    for am in started:
        am.close()


@pytest.fixture
def stub() -> Iterator[StubAlertmanager]:
    """A fault-injecting stand-in for Alertmanager (see ``tests/support/stub.py``)."""
    with StubAlertmanager() as s:
        yield s
