"""The retention service on its own (``run_once`` called directly, as River's maintenance
services are tested) and inside the worker: finished rows older than
``ALERTQ_HISTORY_RETENTION`` go, undelivered and live rows stay."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from alertq import retention
from alertq.breaker import CircuitBreaker
from alertq.config import Settings
from alertq.db import transaction
from alertq.driver import get_queue_driver
from alertq.engine import AlertWorker
from alertq.keepalive import KeepaliveService
from alertq.models import CostSimAlertQueueModel
from alertq.retention import RetentionService
from tests.integration.test_keepalive_service import deliver_all, rows
from tests.support.clock import FakeClock

Factory = async_sessionmaker[AsyncSession]
Q = CostSimAlertQueueModel
T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
DAY = 86400.0


def settings(db_url: str, keep: float = 7 * DAY) -> Settings:
    return Settings(
        database_url=db_url, alertmanager_urls=["http://127.0.0.1:9"], history_retention=keep
    )


async def add(factory: Factory, status: str, created_at: datetime, name: str) -> int:
    """A row of ``status`` created at ``created_at`` (set up with the queue driver)."""
    async with transaction(factory) as s:
        row = await get_queue_driver(s).alerts_insert(
            [{"labels": {"alertname": name}}], "relay", None, None, fingerprint=name, now=created_at
        )
        await s.execute(update(Q).where(Q.id == row.id).values(status=status))
        return row.id


def deleted_total() -> float:
    return REGISTRY.get_sample_value("alertq_retention_deleted_rows_total") or 0.0


async def test_run_once_deletes_finished_rows_older_than_the_retention_only(
    db_url: str, session_factory: Factory
) -> None:
    clock = FakeClock(T0 + timedelta(days=10))
    old = {
        s: await add(session_factory, s, T0, f"old-{s}") for s in ("sent", "superseded", "failed")
    }
    kept = [
        await add(session_factory, "pending", T0, "old-pending"),  # undelivered: never
        await add(session_factory, "sent", T0 + timedelta(days=4), "young-sent"),
    ]
    before = deleted_total()
    service = RetentionService(settings(db_url), session_factory, clock=clock)
    assert await service.run_once() == 3
    assert sorted(r.id for r in await rows(session_factory)) == sorted(kept)
    assert deleted_total() - before == 3
    assert await service.run_once() == 0
    left = {r.id for r in await rows(session_factory)}
    assert left.isdisjoint(old.values())


async def test_a_retention_of_zero_keeps_everything_and_runs_no_loop(
    db_url: str, session_factory: Factory
) -> None:
    await add(session_factory, "sent", T0, "ancient")
    clock = FakeClock(T0 + timedelta(days=365))
    service = RetentionService(settings(db_url, keep=0), session_factory, clock=clock)
    assert await service.run_once() == 0
    await asyncio.wait_for(service.run(asyncio.Event()), 5)  # returns at once: off
    assert len(await rows(session_factory)) == 1


async def test_a_pass_is_bounded_and_the_next_one_finishes_the_backlog(
    db_url: str, session_factory: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(retention, "MAX_BATCHES", 3)
    for i in range(7):
        await add(session_factory, "sent", T0, f"a{i}")
    clock = FakeClock(T0 + timedelta(days=8))
    service = RetentionService(settings(db_url), session_factory, clock=clock, batch_size=2)
    assert await service.run_once() == 6  # 3 batches of 2
    assert await service.run_once() == 1
    assert await rows(session_factory) == []


async def test_an_open_incidents_alert_outlives_the_retention_through_its_keepalives(
    db_url: str, session_factory: Factory
) -> None:
    """A breaker open for 8 days: keep-alive re-arms its row (``created_at`` = now), so the
    retention never takes the alert that still fires; a relayed row of the same age goes."""
    s = settings(db_url)
    clock = FakeClock(T0)
    await CircuitBreaker(s, session_factory, clock=clock).disable("cb", "drift", "ops")
    (firing,) = await deliver_all(session_factory, clock.now)
    relayed = await add(session_factory, "sent", T0, "relayed")
    clock.advance(8 * DAY)
    assert await KeepaliveService(s, session_factory, clock=clock).run_once() == 1
    assert await RetentionService(s, session_factory, clock=clock).run_once() == 1
    left = await rows(session_factory)
    assert [r.id for r in left] == [firing] and relayed not in [r.id for r in left]
    assert left[0].status == "pending" and left[0].created_at == clock.now


async def test_the_worker_runs_retention_while_running_but_not_when_draining(
    db_url: str, session_factory: Factory
) -> None:
    old = await add(session_factory, "sent", datetime.now(UTC) - timedelta(days=2), "old")
    s = settings(db_url, keep=DAY)
    await AlertWorker(s, session_factory).run(asyncio.Event(), drain=True)
    assert [r.id for r in await rows(session_factory)] == [old]

    stop = asyncio.Event()
    worker = AlertWorker(s, session_factory)
    running = asyncio.create_task(worker.run(stop))
    try:
        for _ in range(500):  # the first pass runs at start; poll for its result
            if not await rows(session_factory):
                break
            await asyncio.sleep(0.01)
        assert await rows(session_factory) == []
    finally:
        stop.set()
        await asyncio.wait_for(running, 30)
