"""The keep-alive service on its own: ``run_once`` called directly (as River's maintenance
services are tested), and its loop riding out a database that cannot be reached."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from alertq.breaker import CircuitBreaker
from alertq.config import Settings
from alertq.db import create_engine, create_session_factory, transaction
from alertq.driver import get_queue_driver
from alertq.keepalive import KeepaliveService, keepalive_tick
from alertq.models import CostSimAlertQueueModel
from tests.support import free_port
from tests.support.clock import FakeClock
from tests.support.processes import wait_until

Factory = async_sessionmaker[AsyncSession]
INTERVAL = 60.0
RETENTION = 300.0


def service_settings(db_url: str) -> Settings:
    return Settings(
        database_url=db_url,
        alertmanager_urls=["http://127.0.0.1:9"],
        resend_interval=INTERVAL,
        resolved_retention=RETENTION,
    )


async def deliver_all(factory: Factory, now: datetime) -> list[int]:
    """Mark every due row sent at ``now``, as a worker would (claim, then record)."""
    async with transaction(factory) as s:
        queue = get_queue_driver(s)
        rows = await queue.alerts_claim(now, 256, now + timedelta(seconds=30), 5, "test")
        return await queue.alerts_mark_sent([r.id for r in rows], 5, now, ["am"])


async def rows(factory: Factory) -> list[CostSimAlertQueueModel]:
    async with factory() as s:
        return sorted(await get_queue_driver(s).alerts_list(limit=100), key=lambda r: r.id)


async def test_run_once_rearms_an_open_incidents_firing_row_once_it_is_due(
    db_url: str, session_factory: Factory
) -> None:
    settings = service_settings(db_url)
    clock = FakeClock(datetime(2026, 1, 1, 12, 0, tzinfo=UTC))
    await CircuitBreaker(settings, session_factory, clock=clock).disable("cb", "r", "ops")
    assert len(await deliver_all(session_factory, clock.now)) == 1
    rearmed: list[int] = []
    service = KeepaliveService(settings, session_factory, clock=clock, on_rearm=rearmed.append)

    clock.advance(INTERVAL - keepalive_tick(INTERVAL) - 1)
    assert await service.run_once() == 0 and rearmed == []  # sent too recently
    clock.advance(1)
    assert await service.run_once() == 1 and rearmed == [1]
    (row,) = await rows(session_factory)
    assert (row.status, row.attempts, row.delivered_to) == ("pending", 0, [])
    assert row.next_attempt_at == clock.now == row.created_at
    ends = datetime.fromisoformat(row.payload[0]["endsAt"])
    assert ends == clock.now + timedelta(seconds=4 * INTERVAL)
    assert await service.run_once() == 0  # pending: already on its way
    assert rearmed == [1]


async def test_run_once_resends_the_resolving_row_only_within_the_retention(
    db_url: str, session_factory: Factory
) -> None:
    settings = service_settings(db_url)
    clock = FakeClock(datetime(2026, 1, 1, 12, 0, tzinfo=UTC))
    breaker = CircuitBreaker(settings, session_factory, clock=clock)
    await breaker.disable("cb", "r", "ops")
    await deliver_all(session_factory, clock.now)
    clock.advance(10)
    await breaker.enable("cb", "ops")
    await deliver_all(session_factory, clock.now)
    service = KeepaliveService(settings, session_factory, clock=clock)
    resends = 0
    for _ in range(int(RETENTION / INTERVAL) + 3):
        clock.advance(INTERVAL)
        got = await service.run_once()
        resends += got
        if got:
            await deliver_all(session_factory, clock.now)
    firing, resolving = await rows(session_factory)
    assert (firing.alert_type, resolving.alert_type) == ("disable", "enable")
    assert firing.status == "sent" and firing.attempts == 1  # never re-armed once resolved
    assert resends == int(RETENTION / INTERVAL) - 1  # re-sent until the retention ran out
    assert resolving.status == "sent" and resolving.sent_at is not None
    assert resolving.sent_at < clock.now - timedelta(seconds=INTERVAL)  # it went quiet


async def test_run_loop_reports_an_unreachable_database_once_and_keeps_going(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    url = f"postgresql+asyncpg://alertq:pw@127.0.0.1:{free_port()}/alertq"
    settings = service_settings(url).model_copy(update={"resend_interval": 0.25})
    engine = create_engine(settings)
    service = KeepaliveService(settings, create_session_factory(engine))
    done = asyncio.Event()
    task = asyncio.create_task(service.run(done))
    try:
        await wait_until(lambda: service.outage.failures >= 3, within=30)
    finally:
        done.set()
        await asyncio.wait_for(task, 30)
        await engine.dispose()
    lines = [r for r in caplog.records if r.name.startswith("alertq") and r.levelno >= logging.INFO]
    assert len(lines) == 1 and "unreachable" in lines[0].getMessage()
    assert not any(r.exc_info for r in lines)
