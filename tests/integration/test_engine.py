"""The worker against a fault-injecting stub Alertmanager, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import random
from datetime import timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from alertq.config import DeliveryQuorum, Settings
from alertq.db import transaction
from alertq.delivery import AlertmanagerClient
from alertq.driver import get_alert_driver
from alertq.engine import AlertWorker
from alertq.enqueue import enqueue_alert
from alertq.models import CostSimAlertQueueModel, CostSimCBIncidentModel
from tests.support.clock import FakeClock
from tests.support.stub import StubAlertmanager

Factory = async_sessionmaker[AsyncSession]


def alert(name: str, **labels: str) -> list[dict[str, Any]]:
    return [{"labels": {"alertname": name, **labels}, "annotations": {"summary": name}}]


def worker_settings(db_url: str, *urls: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": db_url,
        "alertmanager_urls": list(urls),
        "alertmanager_timeout": 2.0,
        "lease_seconds": 5.0,
        "concurrency": 1,
        "poll_interval": 0.05,
        "max_attempts": 5,
    }
    values.update(overrides)
    return Settings(**values)


async def enqueue_many(factory: Factory, n: int, *, prefix: str = "A", **kw: Any) -> list[int]:
    async with transaction(factory) as s:
        return [
            (await enqueue_alert(s, alert(f"{prefix}{i}"), "disable", **kw)).id for i in range(n)
        ]


async def rows(factory: Factory) -> dict[int, CostSimAlertQueueModel]:
    async with factory() as s:
        return {r.id: r for r in await get_alert_driver(s).alerts_list(limit=10_000)}


async def once(worker: AlertWorker) -> int:
    client = AlertmanagerClient.from_settings(worker.settings)
    try:
        return await worker.run_once(client)
    finally:
        await client.aclose()


async def test_drain_delivers_every_row_in_batched_posts(
    db_url: str, session_factory: Factory, stub: StubAlertmanager
) -> None:
    ids = await enqueue_many(session_factory, 300)
    worker = AlertWorker(worker_settings(db_url, stub.url), session_factory)
    await asyncio.wait_for(worker.run(asyncio.Event(), drain=True), 60)
    got = await rows(session_factory)
    assert {r.status for r in got.values()} == {"sent"}
    assert all(r.sent_at is not None for r in got.values())
    names = sorted(a["labels"]["alertname"] for a in stub.received_alerts())
    assert names == sorted(f"A{i}" for i in range(300))
    assert stub.requests == 2  # 256 + 44: batched, not one POST per row
    assert len(ids) == 300


async def test_finished_rows_are_due_no_later_than_their_outcome(
    db_url: str, session_factory: Factory, stub: StubAlertmanager
) -> None:
    # The claim left next_attempt_at at the lease end; kept on sent rows it made the claim's
    # in-flight scan look unselective and PostgreSQL read the whole table per claim.
    clock = FakeClock()
    stub.script(
        lambda alerts: (
            (400, "bad A0") if any(a["labels"]["alertname"] == "A0" for a in alerts) else (200, "")
        )
    )
    await enqueue_many(session_factory, 4, now=clock.now)
    worker = AlertWorker(worker_settings(db_url, stub.url), session_factory, clock=clock)
    assert await once(worker) == 4
    got = await rows(session_factory)
    assert sorted(r.status for r in got.values()) == ["failed", "sent", "sent", "sent"]
    assert all(r.next_attempt_at <= clock.now for r in got.values())


async def test_outage_retries_with_growing_delay_then_delivers(
    db_url: str, session_factory: Factory, stub: StubAlertmanager
) -> None:
    clock = FakeClock()
    settings = worker_settings(db_url, stub.url, backoff_base=2.0, backoff_cap=300.0)
    worker = AlertWorker(settings, session_factory, clock=clock, rng=random.Random(1))
    (row_id,) = await enqueue_many(session_factory, 1, now=clock.now)
    stub.respond(503, "down for maintenance")
    delays = []
    for _ in range(3):
        assert await once(worker) == 1
        row = (await rows(session_factory))[row_id]
        assert row.status == "pending" and "503" in (row.last_error or "")
        delays.append((row.next_attempt_at - clock.now).total_seconds())
        assert await once(worker) == 0  # not due yet
        clock.now = row.next_attempt_at
    # Equal jitter keeps each delay within [d/2, d] for d = 2, 4, 8.
    assert 1 <= delays[0] <= 2 and 2 <= delays[1] <= 4 and 4 <= delays[2] <= 8
    stub.reset()
    assert await once(worker) == 1
    row = (await rows(session_factory))[row_id]
    assert (row.status, row.attempts, row.last_error) == ("sent", 4, None)


async def test_retry_after_is_honoured(
    db_url: str, session_factory: Factory, stub: StubAlertmanager
) -> None:
    clock = FakeClock()
    worker = AlertWorker(worker_settings(db_url, stub.url), session_factory, clock=clock)
    (row_id,) = await enqueue_many(session_factory, 1, now=clock.now)
    stub.respond(429, "slow down", retry_after=120)
    await once(worker)
    row = (await rows(session_factory))[row_id]
    assert row.next_attempt_at >= clock.now + timedelta(seconds=120)


async def test_rejected_row_is_dead_lettered_alone_and_others_are_sent(
    db_url: str, session_factory: Factory, stub: StubAlertmanager
) -> None:
    def reject_poison(alerts: list[dict[str, Any]]) -> tuple[int, str]:
        if any(a["labels"]["alertname"] == "A7" for a in alerts):
            return 400, "bad alert A7: invalid label"
        return 200, ""

    stub.script(reject_poison)
    await enqueue_many(session_factory, 20)
    worker = AlertWorker(worker_settings(db_url, stub.url), session_factory)
    assert await once(worker) == 20
    got = await rows(session_factory)
    failed = [r for r in got.values() if r.status == "failed"]
    assert [r.payload[0]["labels"]["alertname"] for r in failed] == ["A7"]
    assert "invalid label" in (failed[0].last_error or "")
    assert sum(r.status == "sent" for r in got.values()) == 19


async def test_row_fails_after_max_attempts(
    db_url: str, session_factory: Factory, stub: StubAlertmanager
) -> None:
    clock = FakeClock()
    settings = worker_settings(db_url, stub.url, max_attempts=3)
    worker = AlertWorker(settings, session_factory, clock=clock)
    async with transaction(session_factory) as s:
        row = await enqueue_alert(s, alert("X"), "disable", max_attempts=3, now=clock.now)
    stub.respond(500, "internal error")
    for _ in range(3):
        assert await once(worker) == 1
        clock.advance(3600)
    got = (await rows(session_factory))[row.id]
    assert (got.status, got.attempts) == ("failed", 3)
    assert "500" in (got.last_error or "")


async def test_quorum_all_retries_only_the_replica_that_missed(
    db_url: str, session_factory: Factory, stub: StubAlertmanager
) -> None:
    clock = FakeClock()
    with StubAlertmanager() as second:
        settings = worker_settings(db_url, stub.url, second.url, delivery_quorum=DeliveryQuorum.ALL)
        worker = AlertWorker(settings, session_factory, clock=clock)
        (row_id,) = await enqueue_many(session_factory, 1, now=clock.now)
        second.respond(503)
        await once(worker)
        row = (await rows(session_factory))[row_id]
        assert row.status == "pending" and row.delivered_to == [stub.url]
        second.reset()
        clock.advance(3600)
        await once(worker)
        row = (await rows(session_factory))[row_id]
        assert row.status == "sent" and row.delivered_to == [stub.url, second.url]
        assert stub.requests == 1  # the retry skipped the replica that had it
        assert second.requests == 2


async def test_quorum_any_is_sent_when_one_replica_accepts(
    db_url: str, session_factory: Factory, stub: StubAlertmanager
) -> None:
    with StubAlertmanager() as second:
        second.respond(503)
        worker = AlertWorker(worker_settings(db_url, stub.url, second.url), session_factory)
        (row_id,) = await enqueue_many(session_factory, 1)
        await once(worker)
        row = (await rows(session_factory))[row_id]
        assert row.status == "sent" and row.delivered_to == [stub.url]
        assert second.requests == 1


async def test_newer_row_supersedes_undelivered_older_one(
    db_url: str, session_factory: Factory, stub: StubAlertmanager
) -> None:
    firing = alert("Breaker", circuit_breaker="cb")
    resolved = [{**firing[0], "endsAt": "2026-01-01T00:00:00Z", "startsAt": "2025-12-31T00:00:00Z"}]
    async with transaction(session_factory) as s:
        old = await enqueue_alert(s, firing, "disable")
    async with transaction(session_factory) as s:
        new = await enqueue_alert(s, resolved, "enable")
    worker = AlertWorker(worker_settings(db_url, stub.url), session_factory)
    await once(worker)
    got = await rows(session_factory)
    assert got[old.id].status == "superseded" and got[new.id].status == "sent"
    assert [a.get("endsAt") for a in stub.received_alerts()] == ["2026-01-01T00:00:00Z"]


async def test_stale_firing_in_flight_never_arrives_after_resolved(
    db_url: str, session_factory: Factory, stub: StubAlertmanager
) -> None:
    """A firing row is mid-delivery when its resolved row is enqueued: the resolved row
    waits, the firing row's failed attempt is retired, and Alertmanager sees only
    firing-then-resolved."""
    clock = FakeClock()
    firing = alert("Breaker", circuit_breaker="cb")
    resolved = [{**firing[0], "endsAt": "2026-01-01T00:00:00Z"}]
    async with transaction(session_factory) as s:
        old = await enqueue_alert(s, firing, "disable", now=clock.now)
    worker = AlertWorker(worker_settings(db_url, stub.url), session_factory, clock=clock)
    stub.hang(30, status=503)
    in_flight = asyncio.create_task(once(worker))
    assert await stub.wait_for_requests_async(1, within=10)
    async with transaction(session_factory) as s:
        new = await enqueue_alert(s, resolved, "enable", now=clock.now)
    other = AlertWorker(worker_settings(db_url, stub.url), session_factory, clock=clock)
    assert await once(other) == 0  # same labels in flight: the resolved row waits
    stub.reset()  # the hung request fails (503) after the hang is released
    stub.stop()
    stub.start()
    await asyncio.wait_for(in_flight, 30)
    got = await rows(session_factory)
    assert got[old.id].status == "superseded"
    assert await once(other) == 1
    got = await rows(session_factory)
    assert got[new.id].status == "sent"
    bodies = [b for b in stub.received if b]
    assert bodies[-1][0].get("endsAt") == "2026-01-01T00:00:00Z"
    assert all(b[0].get("endsAt") is None for b in bodies[:-1])


async def test_late_finisher_cannot_overwrite_newer_outcome(
    db_url: str, session_factory: Factory, stub: StubAlertmanager
) -> None:
    clock = FakeClock()
    settings = worker_settings(db_url, stub.url)
    (row_id,) = await enqueue_many(session_factory, 1, now=clock.now)
    slow = AlertWorker(settings, session_factory, clock=clock, worker_id="slow")
    stub.hang(30, status=500)
    late = asyncio.create_task(once(slow))
    assert await stub.wait_for_requests_async(1, within=10)
    # The slow worker's lease runs out; a second worker reclaims and delivers.
    clock.advance(settings.lease_seconds + 1)
    stub.reset()
    fast = AlertWorker(settings, session_factory, clock=clock, worker_id="fast")
    assert await once(fast) == 1
    assert fast.stats.reclaimed == 1
    assert (await rows(session_factory))[row_id].status == "sent"
    # The slow worker now finishes with a failure; it must not undo "sent".
    stub.stop()
    await asyncio.wait_for(late, 30)
    row = (await rows(session_factory))[row_id]
    assert row.status == "sent" and slow.stats.fenced == 1


async def test_sent_firing_alert_marks_its_incident(
    db_url: str, session_factory: Factory, stub: StubAlertmanager
) -> None:
    async with transaction(session_factory) as s:
        s.add(
            CostSimCBIncidentModel(id="inc9", circuit_breaker_name="cb", reason="r", severity="P1")
        )
    async with transaction(session_factory) as s:
        await enqueue_alert(s, alert("B", incident_id="inc9"), "disable", "cb", "inc9")
    await once(AlertWorker(worker_settings(db_url, stub.url), session_factory))
    async with session_factory() as s:
        inc = await s.get(CostSimCBIncidentModel, "inc9")
        assert inc is not None and inc.alert_sent and inc.alert_sent_at is not None
        assert "accepted" in (inc.alert_response or "")


async def test_enqueue_is_not_slowed_by_a_hung_alertmanager(
    db_url: str, session_factory: Factory, stub: StubAlertmanager
) -> None:
    stub.hang(30)
    await enqueue_many(session_factory, 1)
    settings = worker_settings(db_url, stub.url, alertmanager_timeout=20, lease_seconds=30)
    stop = asyncio.Event()
    task = asyncio.create_task(AlertWorker(settings, session_factory).run(stop))
    assert await stub.wait_for_requests_async(1, within=10)
    # The worker is now blocked on HTTP. An enqueue must not wait for it: it completes
    # while the hung request is still open (no database lock is held across delivery).
    loop = asyncio.get_running_loop()
    started = loop.time()
    await enqueue_many(session_factory, 5, prefix="B")
    elapsed = loop.time() - started
    assert not task.done() and stub.requests == 1
    assert elapsed < 2.0, f"enqueue took {elapsed:.1f}s behind a hung delivery"
    stop.set()
    stub.stop()  # release the hang so the in-flight delivery finishes
    await asyncio.wait_for(task, 30)


async def test_stop_finishes_in_flight_delivery_and_records_it(
    db_url: str, session_factory: Factory, stub: StubAlertmanager
) -> None:
    (row_id,) = await enqueue_many(session_factory, 1)
    stub.hang(1.0)  # answers 200 after a second
    stop = asyncio.Event()
    worker = AlertWorker(worker_settings(db_url, stub.url), session_factory)
    task = asyncio.create_task(worker.run(stop))
    assert await stub.wait_for_requests_async(1, within=10)
    stop.set()
    await asyncio.wait_for(task, 30)
    row = (await rows(session_factory))[row_id]
    assert row.status == "sent" and row.leased_until is None


async def test_row_whose_leases_keep_expiring_is_dead_lettered_not_resent(
    db_url: str, session_factory: Factory, stub: StubAlertmanager
) -> None:
    """A poison row that kills every worker holding it must not block the queue forever."""
    clock = FakeClock()
    settings = worker_settings(db_url, stub.url)
    async with transaction(session_factory) as s:
        row = await enqueue_alert(s, alert("Poison"), "disable", max_attempts=2, now=clock.now)
    for token in (1, 2):  # two workers claim it and die before recording anything
        async with transaction(session_factory) as s:
            lease = clock.now + timedelta(seconds=settings.lease_seconds)
            claimed = await get_alert_driver(s).alerts_claim(clock.now, 10, lease, token, "dead")
            assert [c.id for c in claimed] == [row.id]
        clock.advance(settings.lease_seconds + 1)
    assert await once(AlertWorker(settings, session_factory, clock=clock)) == 1
    got = (await rows(session_factory))[row.id]
    assert got.status == "failed" and "lease expired" in (got.last_error or "")
    assert stub.requests == 0
