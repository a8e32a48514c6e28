"""Migrations build the schema the models describe, and adopt a legacy database in place.

Split by test tier: these are the acceptance tests; see also
``tests/integration/test_migrations.py``.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from alertq.config import Settings
from alertq.db import create_engine, create_session_factory, transaction
from alertq.driver import get_alert_driver
from alertq.migrate import current
from tests.integration.test_migrations import HEAD, schema_diff

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
