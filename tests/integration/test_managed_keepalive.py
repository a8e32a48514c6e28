"""Keep-alive of managed alerts and heartbeat deadlines, on real databases with a fake clock:
Prometheus's re-send semantics, expiry, the two-row bound, a pass that reads only what is
due, and missed heartbeats fired exactly once across concurrent passes.

Split by test tier: these are the integration tests; see also
``tests/unit/test_managed_keepalive.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import delete, event, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from alertq.breaker import CircuitBreaker
from alertq.config import Settings
from alertq.db import transaction
from alertq.delivery import AlertmanagerClient
from alertq.driver import get_queue_driver
from alertq.driver.managed import ManagedDriver
from alertq.engine import AlertWorker
from alertq.enqueue import enqueue_alert
from alertq.managed import (
    HEARTBEAT_ALERTNAME,
    ManagedAlerts,
    ManagedKeepalive,
)
from alertq.models import CostSimAlertQueueModel, CostSimCBIncidentModel, ManagedAlertModel
from tests.support.clock import FakeClock
from tests.support.stub import StubAlertmanager
from tests.unit.test_managed_keepalive import T0, sec

Factory = async_sessionmaker[AsyncSession]


Q = CostSimAlertQueueModel


DISK = {"alertname": "DiskFull", "host": "db1"}


def parse(ts: str) -> datetime:
    return datetime.fromisoformat(ts)


class Harness:
    """The managed-alerts service and a worker sharing a fake clock, driven step by step."""

    def __init__(self, settings: Settings, factory: Factory) -> None:
        self.factory = factory
        self.clock = FakeClock(T0)
        self.service = ManagedAlerts(settings, factory, clock=self.clock)
        self.keepalive = ManagedKeepalive(settings, factory, clock=self.clock)
        self.worker = AlertWorker(settings, factory, clock=self.clock)
        self.client = AlertmanagerClient.from_settings(settings)

    async def deliver(self) -> int:
        total = 0
        while n := await self.worker.run_once(self.client):
            total += n
        return total

    async def rows(self) -> list[Q]:
        async with self.factory() as s:
            return list((await s.scalars(select(Q).order_by(Q.id))).all())

    async def tick(self, seconds: float) -> int:
        """Advance, run one keep-alive pass, deliver; returns rows made due by the pass."""
        self.clock.advance(seconds)
        queued = (await self.keepalive.run_once()).queued
        await self.deliver()
        return queued


def settings_for(db_url: str, stub: StubAlertmanager, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": db_url,
        "alertmanager_urls": [stub.url],
        "alertmanager_timeout": 2.0,
        "lease_seconds": 5.0,
        "resend_interval": 60.0,
        "resolved_retention": 300.0,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
async def h(
    db_url: str, session_factory: Factory, stub: StubAlertmanager
) -> AsyncIterator[Harness]:
    harness = Harness(settings_for(db_url, stub), session_factory)
    yield harness
    await harness.client.aclose()


async def test_firing_alert_is_resent_every_interval_with_endsat_four_intervals_ahead(
    h: Harness, stub: StubAlertmanager
) -> None:
    await h.service.fire(DISK, {"summary": "s"})
    await h.deliver()
    assert await h.tick(30) == 0  # sent half an interval ago
    sends = []
    for _ in range(10):
        if await h.tick(30):
            sends.append(h.clock.now)
    assert sends == [T0 + timedelta(seconds=60 * i) for i in range(1, 6)]  # every interval
    alerts = stub.received_alerts()
    assert len(alerts) == 6
    assert all(a["labels"] == DISK for a in alerts)
    assert {parse(a["startsAt"]) for a in alerts} == {T0}
    ends = [parse(a["endsAt"]) for a in alerts[1:]]
    assert ends == [t + timedelta(seconds=240) for t in sends]
    assert len(await h.rows()) == 1


async def test_resolved_alert_is_resent_for_the_retention_then_never(
    h: Harness, stub: StubAlertmanager
) -> None:
    await h.service.fire(DISK)
    await h.deliver()
    h.clock.advance(10)
    await h.service.resolve(DISK)
    resolved_at = h.clock.now
    await h.deliver()
    (firing, _) = await h.rows()
    rearms = [await h.tick(60) for _ in range(10)]  # 600 s, twice the 300 s retention
    assert rearms == [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    sent = stub.received_alerts()
    assert len(sent) == 2 + 4
    assert all(parse(a["endsAt"]) == resolved_at for a in sent[1:])
    assert [r.alert_type for r in await h.rows()] == ["managed_firing", "managed_resolving"]
    after, _ = await h.rows()  # the firing row of a resolved alert is final: never re-sent
    assert (after.status, after.sent_at, after.payload) == (
        "sent",
        firing.sent_at,
        firing.payload,
    )
    async with h.factory() as s:
        m = (await s.scalars(select(ManagedAlertModel))).one()
        assert m.keepalive_at is None  # never looked at again


async def test_expiry_resolves_the_alert_by_itself_at_the_expiry_time(
    h: Harness, stub: StubAlertmanager
) -> None:
    await h.service.fire(DISK, expires_in=20)
    await h.deliver()
    (first,) = stub.received_alerts()
    assert parse(first["endsAt"]) == T0 + timedelta(seconds=20)  # never past its expiry
    assert await h.tick(20) == 1
    _, resolving = await h.rows()
    assert resolving.alert_type == "managed_resolving" and resolving.status == "sent"
    last = stub.received_alerts()[-1]
    assert last["labels"] == DISK and parse(last["endsAt"]) == T0 + timedelta(seconds=20)
    assert (await h.service.resolve(DISK)).detail == "not firing"


async def test_a_purged_row_is_written_again_and_the_bound_holds(
    h: Harness, stub: StubAlertmanager
) -> None:
    await h.service.fire(DISK)
    await h.deliver()
    async with h.factory() as s, s.begin():
        await s.execute(delete(Q))  # an operator's purge of everything
    assert await h.tick(60) == 1
    (row,) = await h.rows()
    assert row.status == "sent" and len(stub.received_alerts()) == 2


async def test_a_pass_reads_only_due_alerts_not_the_history(h: Harness) -> None:
    for i in range(50):
        labels = {"alertname": "Old", "n": str(i)}
        await h.service.fire(labels)
        await h.service.resolve(labels)
    await h.deliver()
    h.clock.advance(3600)
    first = await h.keepalive.run_once()  # retention over: each looked at one last time
    assert first.examined == 50 and first.queued == 0
    await h.service.fire(DISK)
    await h.deliver()
    h.clock.advance(60)
    result = await h.keepalive.run_once()
    assert result.examined == 1 and result.rearmed == 1


async def test_firing_alerts_keep_at_most_two_rows_over_a_simulated_day(
    h: Harness, stub: StubAlertmanager
) -> None:
    alerts = [{"alertname": "Load", "n": str(i)} for i in range(20)]
    for labels in alerts:
        await h.service.fire(labels, {"summary": "s"})
    await h.deliver()
    for hour in range(1, 25):
        if hour == 6:  # some resolve, some come back, some get new annotations
            for labels in alerts[:5]:
                await h.service.resolve(labels)
        if hour == 8:
            for labels in alerts[:3]:
                await h.service.fire(labels)
        if hour == 9:
            for labels in alerts[10:]:
                await h.service.fire(labels, {"summary": "changed"})
        await h.tick(3600)
        rows = await h.rows()
        per_alert: dict[str, int] = {}
        for row in rows:
            assert row.fingerprint is not None
            per_alert[row.fingerprint] = per_alert.get(row.fingerprint, 0) + 1
        assert max(per_alert.values()) <= 2
        assert len(per_alert) == 20
    steady = [a for a in stub.received_alerts() if a["labels"]["n"] == "7"]
    assert len(steady) == 25  # first send, then one per pass: never skipped


async def test_a_fired_again_alert_never_resends_the_last_episodes_resolving_row(
    h: Harness, stub: StubAlertmanager
) -> None:
    await h.service.fire(DISK)
    await h.deliver()
    await h.service.resolve(DISK)
    await h.deliver()
    h.clock.advance(10)
    await h.service.fire(DISK)
    await h.deliver()
    assert await h.tick(60) == 1
    assert [r.alert_type for r in await h.rows()] == ["managed_firing"]
    last = stub.received_alerts()[-1]
    assert parse(last["endsAt"]) == h.clock.now + timedelta(seconds=240)  # firing, not resolved


async def test_keepalive_leaves_rows_that_are_not_managed_alone(
    h: Harness, stub: StubAlertmanager
) -> None:
    async with transaction(h.factory) as s:
        await enqueue_alert(s, [{"labels": {"alertname": "Plain"}}], "canary_fail", now=T0)
    assert await h.deliver() == 1
    assert await h.tick(60) == 0 and await h.tick(600) == 0
    (row,) = await h.rows()
    assert row.status == "sent" and len(stub.received_alerts()) == 1


async def test_lock_due_returns_due_alerts_oldest_first_with_their_current_row(
    h: Harness,
) -> None:
    """What the pass reads: only alerts whose look has come, each with the state of its
    current row (the firing row while firing, the resolving row once resolved)."""
    gone = {"alertname": "Gone"}
    await h.service.fire(gone)
    await h.service.resolve(gone)
    await h.deliver()
    h.clock.advance(400)
    await h.keepalive.run_once()  # past the 300 s retention: never looked at again
    t1 = h.clock.now
    opened = {"alertname": "Open"}
    closed = {"alertname": "Closed"}
    fresh = {"alertname": "Fresh"}
    await h.service.fire(opened)
    await h.service.fire(closed)
    await h.deliver()
    h.clock.advance(10)
    await h.service.resolve(closed)
    await h.deliver()
    h.clock.advance(40)
    await h.service.fire(fresh)
    await h.deliver()
    now = t1 + timedelta(seconds=70)
    async with h.factory() as s:
        due = await ManagedDriver(s).managed_lock_due(now, 10)
        assert [d.alert.labels for d in due] == [opened, closed]
        o, c = due
        assert (o.row_status, o.row_sent_at, o.alert.state) == ("sent", t1, "firing")
        assert (c.row_status, c.row_sent_at, c.alert.state) == ("sent", t1 + sec(10), "resolved")
        assert c.row_last_attempt_at == t1 + sec(10)
        assert c.alert.resolved_at == t1 + sec(10)
        limited = await ManagedDriver(s).managed_lock_due(now, 1)
        assert [d.alert.labels for d in limited] == [opened]


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
async def test_incidents_lock_skips_an_incident_another_transaction_holds(
    db_url: str, session_factory: Factory, stub: StubAlertmanager
) -> None:
    settings = settings_for(db_url, stub)
    breaker = CircuitBreaker(settings, session_factory, clock=FakeClock(T0))
    busy = (await breaker.disable("busy", "r", "ops")).incident_id
    free = (await breaker.disable("free", "r", "ops")).incident_id
    assert busy is not None and free is not None
    async with session_factory() as s1, session_factory() as s2:
        await s1.begin()
        await s2.begin()
        held = select(CostSimCBIncidentModel).where(CostSimCBIncidentModel.id == busy)
        await s1.execute(held.with_for_update())  # as a reset in progress would
        locked = await asyncio.wait_for(ManagedDriver(s2).managed_incidents_lock([busy, free]), 5)
        assert locked == {free}
        await s2.rollback()
        await s1.rollback()


# --------------------------------------------------------------------------- heartbeats


async def missing_rows(h: Harness) -> list[Q]:
    return [r for r in await h.rows() if r.payload[0]["labels"]["alertname"] == HEARTBEAT_ALERTNAME]


async def test_missed_heartbeat_fires_heartbeat_missing_and_the_next_ping_resolves_it(
    h: Harness, stub: StubAlertmanager
) -> None:
    await h.service.heartbeat("backup", 10, {"team": "ops"})
    assert (await h.keepalive.run_once()).heartbeats_missing == 0
    h.clock.advance(9)
    assert (await h.keepalive.run_once()).heartbeats_missing == 0
    h.clock.advance(1)
    assert (await h.keepalive.run_once()).heartbeats_missing == 1
    h.clock.advance(5)
    assert (await h.keepalive.run_once()).heartbeats_missing == 0  # once, not every pass
    await h.deliver()
    (fired,) = stub.received_alerts()
    assert fired["labels"] == {
        "alertname": HEARTBEAT_ALERTNAME,
        "heartbeat": "backup",
        "team": "ops",
    }
    assert parse(fired["endsAt"]) > h.clock.now
    (hb,) = await h.service.list_heartbeats()
    assert hb.state == "missing"
    await h.service.heartbeat("backup", 10, {"team": "ops"})
    await h.deliver()
    resolved = stub.received_alerts()[-1]
    assert resolved["labels"] == fired["labels"]
    assert parse(resolved["endsAt"]) == h.clock.now
    (hb,) = await h.service.list_heartbeats()
    assert hb.state == "ok" and hb.deadline == h.clock.now + timedelta(seconds=10)


async def test_concurrent_passes_fire_a_missed_heartbeat_exactly_once(
    db_url: str, session_factory: Factory, stub: StubAlertmanager
) -> None:
    settings = settings_for(db_url, stub)
    clock = FakeClock(T0)
    service = ManagedAlerts(settings, session_factory, clock=clock)
    for i in range(20):
        await service.heartbeat(f"job{i}", 10)
    clock.advance(11)
    passes = [ManagedKeepalive(settings, session_factory, clock=clock) for _ in range(4)]
    results = await asyncio.gather(*(p.run_once() for p in passes))
    assert sum(r.heartbeats_missing for r in results) == 20
    async with session_factory() as s:
        rows = list((await s.scalars(select(Q))).all())
    names = sorted(r.payload[0]["labels"]["heartbeat"] for r in rows)
    assert names == sorted(f"job{i}" for i in range(20))  # one row each: fired once


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_rearm_on_sqlite_looks_rows_up_by_id_even_without_statistics(
    engine: AsyncEngine, session_factory: Factory
) -> None:
    """A fresh database has no ANALYZE statistics: the re-arm must still be driven by the
    (id, payload) pairs, not walk every sent row with json_each inside (9x the CPU)."""
    captured: list[tuple[str, Any]] = []

    def capture(_c: Any, _cur: Any, statement: str, params: Any, _ctx: Any, _many: bool) -> None:
        if statement.lstrip().upper().startswith("UPDATE"):
            captured.append((statement, params))

    event.listen(engine.sync_engine, "before_cursor_execute", capture)
    try:
        async with session_factory() as s:
            assert await get_queue_driver(s).alerts_rearm([(1, [])], T0) == []
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", capture)
    ((statement, params),) = captured
    async with engine.connect() as conn:
        result = await conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, params)
        plan = [str(r[-1]) for r in result]
    assert plan[0].startswith("SCAN v"), plan
    assert "SEARCH costsim_alert_queue USING INTEGER PRIMARY KEY (rowid=?)" in plan, plan
