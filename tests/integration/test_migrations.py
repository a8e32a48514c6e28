"""Migrations build the schema the models describe, and adopt a legacy database in place.

Split by test tier: these are the integration tests; see also
``tests/acceptance/test_migrations.py``.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, text

from alertq.config import Settings
from alertq.db import create_engine, create_session_factory, transaction
from alertq.driver import get_alert_driver
from alertq.migrate import current, upgrade
from alertq.models import Base

HEAD = "0007_leased_rows_index"
"""The newest revision: an upgraded database is stamped with it."""


def for_dialect(index: Any, dialect: str) -> bool:
    """Whether ``index`` exists on ``dialect``: an index the models declare for one
    dialect only (``Index(...).ddl_if(dialect=...)``) is compared there only."""
    condition = getattr(index, "_ddl_if", None)
    return condition is None or condition.dialect in (None, dialect)


def schema_diff(url: str) -> list[Any]:
    def diff(conn: Connection) -> list[Any]:
        ctx = MigrationContext.configure(
            conn,
            opts={
                "compare_type": True,
                "include_name": lambda n, t, _p: not (t == "table" and n == "alembic_version"),
                "include_object": lambda obj, _n, t, _r, _c: (
                    t != "index" or for_dialect(obj, conn.dialect.name)
                ),
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
    # Partial on pending rows, and only for queries that bound the due time (0006).
    assert "WHERE ((status = 'pending'::text) AND (next_attempt_at IS NOT NULL))" in indexdef
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
        "ix_costsim_alert_queue_leased",
    }
    assert "WHERE (incident_id IS NOT NULL)" in indexes["ix_costsim_alert_queue_incident_id"]
    # Rows enter it only while leased: the record's row version (lease cleared) does not.
    assert (
        "WHERE ((status = 'pending'::text) AND (leased_until IS NOT NULL))"
        in (indexes["ix_costsim_alert_queue_leased"])
    )
    assert "WHERE (status = 'failed'::text)" in indexes["ix_costsim_alert_queue_failed"]


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
