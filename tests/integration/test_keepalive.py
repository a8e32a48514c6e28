"""Keep-alive: incident alerts are re-sent through the queue, reusing their rows.

Split by test tier: these are the integration tests; see also ``tests/unit/test_keepalive.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from alertq.breaker import CircuitBreaker
from alertq.config import Settings
from alertq.db import transaction
from alertq.delivery import AlertmanagerClient
from alertq.driver import get_alert_driver, get_queue_driver
from alertq.engine import AlertWorker
from alertq.enqueue import enqueue_alert
from alertq.models import CostSimAlertQueueModel, CostSimCBIncidentModel
from tests.support.clock import FakeClock
from tests.support.stub import StubAlertmanager

Factory = async_sessionmaker[AsyncSession]


def parse(ts: str) -> datetime:
    return datetime.fromisoformat(ts)


def keepalives_metric() -> float:
    return REGISTRY.get_sample_value("alertq_keepalives_sent_total") or 0.0


def settings_for(db_url: str, stub: StubAlertmanager, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": db_url,
        "alertmanager_urls": [stub.url],
        "alertmanager_timeout": 2.0,
        "lease_seconds": 5.0,
        "concurrency": 1,
        "poll_interval": 0.05,
        "resend_interval": 60.0,
        "resolved_retention": 300.0,
        "failure_threshold": 1,
    }
    values.update(overrides)
    return Settings(**values)


class Harness:
    """A breaker and a worker sharing a fake clock, driven step by step."""

    def __init__(self, settings: Settings, factory: Factory, clock: FakeClock) -> None:
        self.factory = factory
        self.clock = clock
        self.breaker = CircuitBreaker(settings, factory, clock=clock)
        self.worker = AlertWorker(settings, factory, clock=clock)
        self.client = AlertmanagerClient.from_settings(settings)

    async def deliver(self) -> int:
        return await self.worker.run_once(self.client)

    async def rows(self) -> list[CostSimAlertQueueModel]:
        async with self.factory() as s:
            return sorted(await get_alert_driver(s).alerts_list(limit=10_000), key=lambda r: r.id)

    async def incident(self, incident_id: str) -> CostSimCBIncidentModel:
        async with self.factory() as s:
            inc = await s.get(CostSimCBIncidentModel, incident_id)
            assert inc is not None
            return inc

    async def close(self) -> None:
        await self.client.aclose()


@pytest.fixture
async def harness(
    db_url: str, session_factory: Factory, stub: StubAlertmanager
) -> AsyncIterator[Harness]:
    h = Harness(settings_for(db_url, stub), session_factory, FakeClock())
    yield h
    await h.close()


async def test_open_incident_is_resent_every_interval_with_a_fresh_ends_at(
    harness: Harness, stub: StubAlertmanager
) -> None:
    h = harness
    state = await h.breaker.disable("cb", "maintenance", "ops")
    assert await h.deliver() == 1
    (row,) = await h.rows()
    sent_at = row.sent_at
    before = keepalives_metric()
    h.clock.advance(30)
    assert await h.worker.keepalive.run_once() == 0  # sent half an interval ago
    h.clock.advance(30)
    assert await h.worker.keepalive.run_once() == 1
    assert keepalives_metric() == before + 1
    assert h.worker.stats.keepalives == 1
    (rearmed,) = await h.rows()
    assert rearmed.id == row.id and rearmed.status == "pending" and rearmed.attempts == 0
    assert rearmed.delivered_to == [] and rearmed.created_at == h.clock.now
    assert parse(rearmed.payload[0]["endsAt"]) == h.clock.now + timedelta(seconds=240)
    assert rearmed.fingerprint == row.fingerprint
    assert await h.worker.keepalive.run_once() == 0  # pending rows are left alone
    assert await h.deliver() == 1
    first, second = stub.received_alerts()
    assert first["labels"] == second["labels"]
    assert first["labels"]["incident_id"] == state.incident_id
    assert parse(second["endsAt"]) - parse(first["endsAt"]) == timedelta(seconds=60)
    (resent,) = await h.rows()
    assert resent.status == "sent" and resent.sent_at is not None and sent_at is not None
    assert resent.sent_at > sent_at


async def test_failed_firing_row_is_rearmed_too(harness: Harness, stub: StubAlertmanager) -> None:
    h = harness
    await h.breaker.disable("cb", "maintenance", "ops")
    stub.respond(400, "bad alert")
    await h.deliver()
    (row,) = await h.rows()
    assert row.status == "failed"
    stub.reset()
    h.clock.advance(60)
    assert await h.worker.keepalive.run_once() == 1
    assert await h.deliver() == 1
    (row,) = await h.rows()
    assert row.status == "sent" and row.attempts == 1


async def test_resolved_incident_resends_only_its_resolving_alert_for_the_retention(
    harness: Harness, stub: StubAlertmanager
) -> None:
    h = harness
    await h.breaker.disable("cb", "maintenance", "ops")
    await h.deliver()
    h.clock.advance(10)
    await h.breaker.enable("cb", "ops")
    resolved_at = h.clock.now
    await h.deliver()
    firing, resolving = await h.rows()
    assert (firing.status, resolving.status) == ("sent", "sent")
    firing_payload = firing.payload
    rearms = 0
    for _ in range(10):  # 600 s, twice the 300 s retention
        h.clock.advance(60)
        rearms += await h.worker.keepalive.run_once()
        await h.deliver()
    assert rearms == 4  # at 60, 120, 180 and 240 s after the resolution
    firing, resolving = await h.rows()
    assert firing.payload == firing_payload and firing.status == "sent"
    sent = stub.received_alerts()
    assert len(sent) == 2 + 4
    assert all(parse(a["endsAt"]) == resolved_at for a in sent[1:])
    assert {a["labels"]["incident_id"] for a in sent} == {firing.incident_id}


async def test_row_is_not_rearmed_once_a_newer_row_has_its_labels(harness: Harness) -> None:
    """The guard against a concurrent reset: the resolving row is in the queue but the
    incident does not look resolved yet. The firing row must not overtake it."""
    h = harness
    await h.breaker.disable("cb", "maintenance", "ops")
    await h.deliver()
    (firing,) = await h.rows()
    newer = [{**firing.payload[0], "endsAt": firing.payload[0]["startsAt"]}]
    async with transaction(h.factory) as s:
        await enqueue_alert(s, newer, "enable", "cb", firing.incident_id, now=h.clock.now)
    h.clock.advance(60)
    assert await h.worker.keepalive.run_once() == 0
    async with transaction(h.factory) as s:
        assert not await get_queue_driver(s).alerts_rearm(
            [(firing.id, firing.payload)], h.clock.now
        )
    assert (await h.rows())[0].status == "sent"


async def test_incident_records_first_acceptance_and_last_response(
    harness: Harness, stub: StubAlertmanager
) -> None:
    h = harness
    state = await h.breaker.disable("cb", "maintenance", "ops")
    assert state.incident_id is not None
    assert not (await h.incident(state.incident_id)).alert_sent
    await h.deliver()
    inc = await h.incident(state.incident_id)
    first_sent_at = inc.alert_sent_at
    assert inc.alert_sent and first_sent_at == h.clock.now
    assert "accepted" in (inc.alert_response or "")
    h.clock.advance(60)
    await h.worker.keepalive.run_once()
    stub.respond(503, "maintenance window")
    await h.deliver()
    inc = await h.incident(state.incident_id)
    assert inc.alert_sent_at == first_sent_at  # the first acceptance is kept
    assert "503" in (inc.alert_response or "") and "accepted" not in (inc.alert_response or "")


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
async def test_keepalive_skips_an_incident_locked_by_a_concurrent_reset(
    harness: Harness,
) -> None:
    h = harness
    state = await h.breaker.disable("cb", "maintenance", "ops")
    await h.deliver()
    h.clock.advance(60)
    async with h.factory() as other, other.begin():
        stmt = (
            select(CostSimCBIncidentModel)
            .where(CostSimCBIncidentModel.id == state.incident_id)
            .with_for_update()
        )
        await other.execute(stmt)  # held like a reset in progress would
        assert await asyncio.wait_for(h.worker.keepalive.run_once(), 10) == 0
    assert await h.worker.keepalive.run_once() == 1


async def test_running_worker_keeps_the_alert_alive(
    db_url: str, session_factory: Factory, stub: StubAlertmanager
) -> None:
    """The keep-alive loop runs inside ``AlertWorker.run`` on a real clock."""
    settings = settings_for(db_url, stub, resend_interval=0.5)
    state = await CircuitBreaker(settings, session_factory).disable("cb", "r", "ops")
    stop = asyncio.Event()
    worker = AlertWorker(settings, session_factory)
    task = asyncio.create_task(worker.run(stop))
    try:
        assert await stub.wait_for_requests_async(4, within=20)
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)
    alerts = stub.received_alerts()
    assert {a["labels"]["incident_id"] for a in alerts} == {state.incident_id}
    ends = [parse(a["endsAt"]) for a in alerts]
    assert ends == sorted(ends) and len(set(ends)) == len(ends)
    assert worker.stats.keepalives >= 3
    async with session_factory() as s:
        assert len(await get_alert_driver(s).alerts_list(limit=100)) == 1


@pytest.mark.slow
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_a_day_long_incident_keeps_at_most_two_rows(
    harness: Harness, stub: StubAlertmanager
) -> None:
    """24 simulated hours at a 60 s resend interval: 1440 keep-alive passes and deliveries.

    The bound: keep-alives reuse rows, so an incident has at most 2 queue rows (firing and
    resolving) however long it lasts. (SQLite only, for time: the keep-alive statements
    run on PostgreSQL in every other test here.)
    """
    h = harness
    day = await h.breaker.disable("all-day", "drift", "ops")
    short = None
    sends: list[datetime] = []
    for step in range(1, 1441):
        if step == 120:
            short = await h.breaker.disable("short", "drift", "ops")
        if step == 180:
            await h.breaker.enable("short", "ops")
        await h.worker.keepalive.run_once()
        await h.deliver()
        sends.append(h.clock.now)
        h.clock.advance(60)
    assert short is not None
    rows = await h.rows()
    per_incident: dict[str | None, list[str | None]] = {}
    for row in rows:
        per_incident.setdefault(row.incident_id, []).append(row.alert_type)
    assert per_incident == {day.incident_id: ["disable"], short.incident_id: ["disable", "enable"]}
    assert len(rows) <= 2 * len(per_incident)
    day_alerts = [a for a in stub.received_alerts() if a["labels"]["circuit_breaker"] == "all-day"]
    assert len(day_alerts) == 1440  # one send per interval, none skipped
    # Each send extends endsAt four intervals past its own time: never auto-resolved.
    for at, alert in zip(sends, day_alerts, strict=True):
        assert parse(alert["endsAt"]) == at + timedelta(seconds=240)
