"""Upgrading in place to managed alerts: a breaker incident open at upgrade time keeps being
re-sent, and its reset resolves it, on both backends."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

from sqlalchemy import select, text

from alertq.alerts import breaker_firing_payload, payload_fingerprint
from alertq.breaker import CircuitBreaker
from alertq.config import Settings
from alertq.db import create_engine, create_session_factory
from alertq.managed import ManagedKeepalive
from alertq.migrate import upgrade
from alertq.models import CostSimAlertQueueModel, CostSimCBIncidentModel, ManagedAlertModel
from tests.support.clock import FakeClock

OPENED = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def test_an_incident_open_at_upgrade_is_kept_alive_and_resolved_as_a_managed_alert(
    empty_url: str,
) -> None:
    url = empty_url
    upgrade(url, "0002")
    incident = CostSimCBIncidentModel(
        id="abc123def456",
        circuit_breaker_name="costsim_v2",
        timestamp=OPENED,
        reason="drift",
        severity="P1",
        drift_score=0.9,
        resolved_at=None,
        resolved_by=None,
        resolution_notes=None,
    )
    payload = breaker_firing_payload(
        incident, now=OPENED, resend_interval=60, instance="alertq", runbook_url="https://r/x"
    )
    settings = Settings(database_url=url)
    clock = FakeClock(OPENED + timedelta(seconds=120))

    async def seed() -> None:
        engine = create_engine(settings)
        try:
            async with engine.begin() as conn:
                await conn.execute(
                    text(
                        "INSERT INTO costsim_cb_incidents (id, circuit_breaker_name, timestamp,"
                        " reason, severity, resolved) VALUES"
                        " ('abc123def456', 'costsim_v2', :ts, 'drift', 'P1', false)"
                    ),
                    {"ts": OPENED if url.startswith("postgresql") else "2026-01-01 12:00:00"},
                )
                await conn.execute(
                    text(
                        "INSERT INTO costsim_cb_state (name, disabled, incident_id)"
                        " VALUES ('costsim_v2', true, 'abc123def456')"
                    )
                )
                sent = OPENED if url.startswith("postgresql") else "2026-01-01 12:00:00"
                await conn.execute(
                    text(
                        "INSERT INTO costsim_alert_queue (payload, alert_type,"
                        " circuit_breaker_name, incident_id, status, sent_at, fingerprint,"
                        " next_attempt_at, created_at)"
                        " VALUES (:p, 'disable', 'costsim_v2', 'abc123def456', 'sent', :s,"
                        " :fp, :s, :s)"
                    ),
                    {"p": json.dumps(payload), "s": sent, "fp": payload_fingerprint(payload)},
                )
        finally:
            await engine.dispose()

    async def after_upgrade() -> None:
        engine = create_engine(settings)
        factory = create_session_factory(engine)
        try:
            result = await ManagedKeepalive(settings, factory, clock=clock).run_once()
            assert result.rearmed == 1
            async with factory() as s:
                (row,) = (await s.scalars(select(CostSimAlertQueueModel))).all()
                assert row.status == "pending" and row.alert_type == "disable"
                (alert,) = row.payload
                assert alert["labels"] == payload[0]["labels"]
                assert datetime.fromisoformat(alert["endsAt"]) == clock.now + timedelta(seconds=240)
                (m,) = (await s.scalars(select(ManagedAlertModel))).all()
                assert m.incident_id == "abc123def456" and m.starts_at == OPENED
            await CircuitBreaker(settings, factory, clock=clock).enable("costsim_v2", "ops")
            async with factory() as s:
                rows = (await s.scalars(select(CostSimAlertQueueModel).order_by("id"))).all()
                assert [r.alert_type for r in rows] == ["disable", "enable"]
                assert rows[1].payload[0]["labels"] == payload[0]["labels"]
                m = (await s.scalars(select(ManagedAlertModel))).one()
                assert m.state == "resolved"
        finally:
            await engine.dispose()

    asyncio.run(seed())
    upgrade(url)
    asyncio.run(after_upgrade())
