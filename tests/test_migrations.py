"""Migrations build the schema the models describe, and adopt a legacy database in place."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, text
from sqlalchemy.engine import make_url

from alertq.config import Settings
from alertq.db import create_engine, create_session_factory, transaction
from alertq.driver import get_alert_driver
from alertq.migrate import current, upgrade
from alertq.models import Base
from tests.conftest import PG_ADMIN_URL, _admin, unavailable

HEAD = "0005_queue_write_indexes"
"""The newest revision: an upgraded database is stamped with it."""

LEGACY_DDL = [
    """CREATE TABLE costsim_alert_queue (
        id BIGSERIAL PRIMARY KEY,
        payload JSONB NOT NULL,
        alert_type TEXT, circuit_breaker_name TEXT, incident_id TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        max_attempts INTEGER NOT NULL DEFAULT 10,
        last_attempt_at TIMESTAMPTZ,
        next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT now(),
        last_error TEXT,
        status TEXT NOT NULL DEFAULT 'pending',
        created_at TIMESTAMPTZ NOT NULL DEFAULT now())""",
    "CREATE INDEX idx_costsim_alert_queue_next ON costsim_alert_queue (next_attempt_at)",
    "CREATE INDEX idx_costsim_alert_queue_status ON costsim_alert_queue (status)",
    """CREATE TABLE costsim_cb_incidents (
        id TEXT PRIMARY KEY, circuit_breaker_name TEXT NOT NULL,
        timestamp TIMESTAMPTZ NOT NULL DEFAULT now(), reason TEXT NOT NULL,
        severity TEXT NOT NULL, drift_score DOUBLE PRECISION, sample_count INTEGER,
        details_json TEXT, resolved BOOLEAN NOT NULL DEFAULT false,
        resolved_at TIMESTAMPTZ, resolved_by TEXT, resolution_notes TEXT,
        alert_sent BOOLEAN NOT NULL DEFAULT false, alert_sent_at TIMESTAMPTZ,
        alert_response TEXT)""",
    "CREATE INDEX ix_costsim_cb_incidents_circuit_breaker_name"
    " ON costsim_cb_incidents (circuit_breaker_name)",
    "CREATE INDEX ix_costsim_cb_incidents_timestamp ON costsim_cb_incidents (timestamp)",
    "CREATE INDEX ix_costsim_cb_incidents_resolved ON costsim_cb_incidents (resolved)",
    """CREATE TABLE costsim_cb_state (
        id BIGSERIAL PRIMARY KEY, name TEXT NOT NULL, disabled BOOLEAN NOT NULL DEFAULT false,
        disabled_by TEXT, disabled_reason TEXT, disabled_until TIMESTAMPTZ, incident_id TEXT,
        consecutive_failures INTEGER NOT NULL DEFAULT 0, last_failure_at TIMESTAMPTZ,
        updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
        created_at TIMESTAMPTZ NOT NULL DEFAULT now())""",
    "CREATE UNIQUE INDEX ix_costsim_cb_state_name ON costsim_cb_state (name)",
]

LEGACY_ROWS = [
    """INSERT INTO costsim_alert_queue (payload, alert_type, circuit_breaker_name, incident_id,
        attempts, status, next_attempt_at, created_at) VALUES
        ('[{"labels": {"alertname": "CostSimV2Disabled", "severity": "P1"}}]', 'disable',
         'costsim_v2', 'abc123', 0, 'pending', '2025-01-01T00:00:00Z', '2025-01-01T00:00:00Z'),
        ('[{"labels": {"alertname": "CostSimV2Reenabled"}}]', 'enable', 'costsim_v2',
         'abc123', 3, 'sent', '2025-01-01T00:00:00Z', '2025-01-01T00:01:00Z'),
        ('[{"labels": {"alertname": "CostSimV2Disabled"}}]', 'disable', 'costsim_v2',
         'def456', 10, 'failed', '2025-01-01T00:00:00Z', '2025-01-01T00:02:00Z')""",
    """INSERT INTO costsim_cb_incidents (id, circuit_breaker_name, reason, severity, resolved)
        VALUES ('abc123', 'costsim_v2', 'drift', 'P1', true)""",
    "INSERT INTO costsim_cb_state (name, disabled, incident_id)"
    " VALUES ('costsim_v2', true, 'abc123')",
]


def schema_diff(url: str) -> list[Any]:
    def diff(conn: Connection) -> list[Any]:
        ctx = MigrationContext.configure(
            conn,
            opts={
                "compare_type": True,
                "include_name": lambda n, t, _p: not (t == "table" and n == "alembic_version"),
            },
        )
        return list(compare_metadata(ctx, Base.metadata))

    async def go() -> list[Any]:
        engine = create_engine(Settings(database_url=url))
        try:
            async with engine.connect() as conn:
                return await conn.run_sync(diff)
        finally:
            await engine.dispose()

    return asyncio.run(go())


@pytest.fixture
def empty_pg_url() -> Iterator[str]:
    name = f"alertq_mig_{uuid.uuid4().hex[:10]}"
    try:
        asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        unavailable("PostgreSQL", f"{type(exc).__name__}: {exc}")
    yield make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=["sqlite", "postgres"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}"
    return str(request.getfixturevalue("empty_pg_url"))


def test_migrations_match_the_models(empty_url: str) -> None:
    upgrade(empty_url)
    assert schema_diff(empty_url) == []
    assert current(empty_url) == HEAD


def test_upgrade_twice_is_a_no_op(empty_url: str) -> None:
    upgrade(empty_url)
    upgrade(empty_url)
    assert current(empty_url) == HEAD


@pytest.mark.postgres
def test_postgres_claim_index_is_partial_and_autovacuum_tuned(empty_pg_url: str) -> None:
    upgrade(empty_pg_url)

    async def read() -> tuple[str, list[str]]:
        engine = create_engine(Settings(database_url=empty_pg_url))
        try:
            async with engine.connect() as conn:
                indexdef = (
                    await conn.execute(
                        text(
                            "SELECT indexdef FROM pg_indexes "
                            "WHERE indexname = 'ix_costsim_alert_queue_due'"
                        )
                    )
                ).scalar_one()
                options = (
                    await conn.execute(
                        text(
                            "SELECT reloptions FROM pg_class WHERE relname = 'costsim_alert_queue'"
                        )
                    )
                ).scalar_one()
                return indexdef, list(options)
        finally:
            await engine.dispose()

    indexdef, options = asyncio.run(read())
    assert "WHERE (status = 'pending'::text)" in indexdef
    assert "autovacuum_vacuum_scale_factor=0.01" in options


@pytest.mark.postgres
def test_postgres_queue_keeps_only_the_indexes_its_queries_read(empty_pg_url: str) -> None:
    # Every claim and record writes a new entry in each index a row is in: the seed's full
    # next_attempt_at and status indexes, read by no query, doubled PostgreSQL's CPU per row.
    upgrade(empty_pg_url)

    async def read() -> dict[str, str]:
        engine = create_engine(Settings(database_url=empty_pg_url))
        try:
            async with engine.connect() as conn:
                rows = await conn.execute(
                    text(
                        "SELECT indexname, indexdef FROM pg_indexes "
                        "WHERE tablename = 'costsim_alert_queue'"
                    )
                )
                return {name: definition for name, definition in rows.all()}
        finally:
            await engine.dispose()

    indexes = asyncio.run(read())
    assert set(indexes) == {
        "costsim_alert_queue_pkey",
        "ix_costsim_alert_queue_due",
        "ix_costsim_alert_queue_pending_fingerprint",
        "ix_costsim_alert_queue_incident_id",
        "ix_costsim_alert_queue_failed",
    }
    assert "WHERE (incident_id IS NOT NULL)" in indexes["ix_costsim_alert_queue_incident_id"]
    assert "WHERE (status = 'failed'::text)" in indexes["ix_costsim_alert_queue_failed"]


@pytest.mark.postgres
def test_legacy_database_is_adopted_without_losing_a_row(empty_pg_url: str) -> None:
    async def create_legacy() -> None:
        engine = create_engine(Settings(database_url=empty_pg_url))
        try:
            async with engine.begin() as conn:
                for stmt in LEGACY_DDL + LEGACY_ROWS:
                    await conn.execute(text(stmt))
        finally:
            await engine.dispose()

    asyncio.run(create_legacy())
    env = {**os.environ, "ALERTQ_DATABASE_URL": empty_pg_url}
    done = subprocess.run(
        [sys.executable, "-m", "alertq", "db", "upgrade"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert current(empty_pg_url) == HEAD
    assert schema_diff(empty_pg_url) == []

    async def read_back() -> None:
        engine = create_engine(Settings(database_url=empty_pg_url))
        factory = create_session_factory(engine)
        try:
            async with transaction(factory) as s:
                d = get_alert_driver(s)
                stats = await d.fetch_queue_stats()
                assert (stats["pending"], stats["sent"], stats["failed"]) == (1, 1, 1)
                assert stats["oldest_pending_created_at"] == datetime(2025, 1, 1, tzinfo=UTC)
                (row,) = await d.fetch_pending_alerts(datetime.now(UTC), 10)
                assert row.payload[0]["labels"]["alertname"] == "CostSimV2Disabled"
                assert (row.incident_id, row.delivered_to, row.sent_at) == ("abc123", [], None)
                claimed = await d.alerts_claim(
                    datetime.now(UTC), 10, datetime.now(UTC) + timedelta(seconds=30), 1, "w"
                )
                assert [c.id for c in claimed] == [row.id]
                assert await d.mark_incident_alert_sent("abc123", datetime.now(UTC))
                assert await d.retry_failed_alerts(1, datetime.now(UTC)) == 1
        finally:
            await engine.dispose()

    asyncio.run(read_back())


def test_legacy_sqlite_database_at_baseline_is_upgraded_in_place(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'legacy.db'}"
    upgrade(url, "0001")

    async def seed_rows() -> None:
        engine = create_engine(Settings(database_url=url))
        try:
            async with engine.begin() as conn:
                await conn.execute(
                    text(
                        "INSERT INTO costsim_alert_queue (payload, alert_type, status, "
                        "next_attempt_at, created_at) VALUES "
                        """('[{"labels": {"alertname": "Old"}}]', 'disable', 'pending', """
                        "'2025-01-01 00:00:00', '2025-01-01 00:00:00')"
                    )
                )
        finally:
            await engine.dispose()

    asyncio.run(seed_rows())
    upgrade(url)

    async def read_back() -> None:
        engine = create_engine(Settings(database_url=url))
        try:
            async with transaction(create_session_factory(engine)) as s:
                (row,) = await get_alert_driver(s).fetch_pending_alerts(datetime.now(UTC), 10)
                assert row.payload == [{"labels": {"alertname": "Old"}}]
                assert row.created_at == datetime(2025, 1, 1, tzinfo=UTC)
        finally:
            await engine.dispose()

    asyncio.run(read_back())
    assert schema_diff(url) == []
