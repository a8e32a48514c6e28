"""The driver's contract, run against SQLite and a real PostgreSQL (the ``db_url`` fixture).

Split by test tier: these are the integration tests; see also ``tests/unit/test_driver.py``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from alertq import get_alert_driver
from alertq.db import transaction
from alertq.models import CostSimAlertQueueModel, CostSimCBIncidentModel

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def payload(name: str = "Test", **labels: str) -> list[dict[str, Any]]:
    return [{"labels": {"alertname": name, **labels}, "annotations": {"summary": "s"}}]


async def insert(
    factory: async_sessionmaker[AsyncSession], n: int, *, at: datetime = T0, **kw: Any
) -> list[int]:
    async with transaction(factory) as s:
        d = get_alert_driver(s)
        ids = []
        for i in range(n):
            row = await d.insert_alert(
                payload(f"A{i}"), "disable", "cb", None, now=at + timedelta(seconds=i), **kw
            )
            ids.append(row.id)
        return ids


async def count(factory: async_sessionmaker[AsyncSession], **where: Any) -> int:
    async with factory() as s:
        stmt = select(func.count()).select_from(CostSimAlertQueueModel)
        for k, v in where.items():
            stmt = stmt.where(getattr(CostSimAlertQueueModel, k) == v)
        return int((await s.execute(stmt)).scalar_one())


async def test_insert_alert_stores_row_with_aware_datetimes(session: AsyncSession) -> None:
    d = get_alert_driver(session)
    row = await d.insert_alert(payload(), "disable", "cb", "inc1", fingerprint="fp")
    await session.commit()
    session.expunge_all()
    got = await d.alerts_get(row.id)
    assert got is not None
    assert got.payload == payload()
    assert (got.alert_type, got.circuit_breaker_name, got.incident_id) == ("disable", "cb", "inc1")
    assert (got.status, got.attempts, got.fingerprint) == ("pending", 0, "fp")
    assert got.created_at.tzinfo is not None and got.next_attempt_at.tzinfo is not None
    assert abs(got.created_at - datetime.now(UTC)) < timedelta(minutes=1)
    assert got.delivered_to == []


async def test_fetch_pending_returns_due_rows_oldest_first_up_to_batch(
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    await insert(session_factory, 5)
    future = await insert(session_factory, 1, at=T0 + timedelta(hours=1))
    async with transaction(session_factory) as s:
        rows = await get_alert_driver(s).fetch_pending_alerts(T0 + timedelta(seconds=10), 3)
        assert [r.payload[0]["labels"]["alertname"] for r in rows] == ["A0", "A1", "A2"]
        rows = await get_alert_driver(s).fetch_pending_alerts(T0 + timedelta(seconds=10), 100)
        assert len(rows) == 5 and future[0] not in {r.id for r in rows}


@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)  # SQLite serialises writers
async def test_concurrent_fetch_pending_gets_disjoint_rows_on_postgres(
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    await insert(session_factory, 10)
    now = T0 + timedelta(minutes=1)
    async with session_factory() as s1, session_factory() as s2:
        await s1.begin()
        await s2.begin()
        first = await get_alert_driver(s1).fetch_pending_alerts(now, 6)
        # s2 runs while s1 still holds its locks.
        second = await get_alert_driver(s2).fetch_pending_alerts(now, 6)
        ids1, ids2 = {r.id for r in first}, {r.id for r in second}
        assert len(ids1) == 6 and len(ids2) == 4
        assert not ids1 & ids2
        await s1.rollback()
        await s2.rollback()


async def test_fetch_queue_stats_counts_every_status_in_one_query(
    session_factory: async_sessionmaker[AsyncSession], engine: Any
) -> None:
    ids = await insert(session_factory, 4)
    async with transaction(session_factory) as s:
        d = get_alert_driver(s)
        rows = await d.fetch_pending_alerts(T0 + timedelta(minutes=1), 2)
        assert await d.update_alert_sent(rows[0], T0)
        assert await d.update_alert_failed(rows[1], T0, "boom")
    statements: list[str] = []
    from sqlalchemy import event

    def record(*args: Any) -> None:
        statements.append(args[2])

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    async with transaction(session_factory) as s:
        stats = await get_alert_driver(s).fetch_queue_stats()
    event.remove(engine.sync_engine, "before_cursor_execute", record)
    assert len([q for q in statements if "costsim_alert_queue" in q]) == 1
    assert (stats["pending"], stats["sent"], stats["failed"], stats["total"]) == (2, 1, 1, 4)
    assert stats["oldest_pending_created_at"] == T0 + timedelta(seconds=2)
    assert stats["oldest_pending_created_at"].tzinfo is not None
    assert ids


async def test_fetch_queue_stats_on_empty_queue(session: AsyncSession) -> None:
    stats = await get_alert_driver(session).fetch_queue_stats()
    assert stats["pending"] == stats["sent"] == stats["failed"] == 0
    assert stats["oldest_pending_created_at"] is None


async def test_update_alert_sent_stores_sent_at(
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    await insert(session_factory, 1)
    sent = T0 + timedelta(seconds=30)
    async with transaction(session_factory) as s:
        (row,) = await get_alert_driver(s).fetch_pending_alerts(T0 + timedelta(minutes=1), 10)
        assert await get_alert_driver(s).update_alert_sent(row, sent)
        assert row.status == "sent"
    async with session_factory() as s:
        got = await get_alert_driver(s).alerts_get(row.id)
        assert got is not None and got.status == "sent" and got.sent_at == sent


async def test_update_alert_retry_counts_attempt_and_reschedules(
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    await insert(session_factory, 1)
    nxt = T0 + timedelta(minutes=5)
    async with transaction(session_factory) as s:
        (row,) = await get_alert_driver(s).fetch_pending_alerts(T0 + timedelta(minutes=1), 10)
        assert await get_alert_driver(s).update_alert_retry(row, T0, nxt, "HTTP 503")
    async with session_factory() as s:
        got = await get_alert_driver(s).alerts_get(row.id)
        assert got is not None
        assert (got.status, got.attempts, got.last_error) == ("pending", 1, "HTTP 503")
        assert got.next_attempt_at == nxt and got.last_attempt_at == T0
        assert await get_alert_driver(s).fetch_pending_alerts(nxt - timedelta(seconds=1), 9) == []


async def test_update_alert_failed_marks_failed_with_error(
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    await insert(session_factory, 1)
    async with transaction(session_factory) as s:
        (row,) = await get_alert_driver(s).fetch_pending_alerts(T0 + timedelta(minutes=1), 10)
        assert await get_alert_driver(s).update_alert_failed(row, T0, "HTTP 400: bad label")
    async with session_factory() as s:
        got = await get_alert_driver(s).alerts_get(row.id)
        assert got is not None
        assert (got.status, got.attempts, got.last_error) == ("failed", 1, "HTTP 400: bad label")


async def test_seed_updates_are_fenced_against_a_newer_claim(
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    await insert(session_factory, 1)
    async with transaction(session_factory) as s:
        (stale,) = await get_alert_driver(s).fetch_pending_alerts(T0 + timedelta(minutes=1), 1)
    # Another worker claims the row meanwhile.
    async with transaction(session_factory) as s:
        claimed = await get_alert_driver(s).alerts_claim(
            T0 + timedelta(minutes=1), 1, T0 + timedelta(minutes=2), 42, "w2"
        )
        assert [c.id for c in claimed] == [stale.id]
    async with transaction(session_factory) as s:
        assert not await get_alert_driver(s).update_alert_sent(stale, T0)
    assert await count(session_factory, status="sent") == 0


async def test_mark_incident_alert_sent_sets_flag_once(
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    async with transaction(session_factory) as s:
        s.add(
            CostSimCBIncidentModel(id="inc1", circuit_breaker_name="cb", reason="r", severity="P2")
        )
    first, second = T0, T0 + timedelta(minutes=1)
    async with transaction(session_factory) as s:
        assert await get_alert_driver(s).mark_incident_alert_sent("inc1", first, "200 OK")
        assert not await get_alert_driver(s).mark_incident_alert_sent("inc1", second)
        assert not await get_alert_driver(s).mark_incident_alert_sent("missing", second)
    async with session_factory() as s:
        inc = await s.get(CostSimCBIncidentModel, "inc1")
        assert inc is not None and inc.alert_sent and inc.alert_sent_at == first
        assert inc.alert_response == "200 OK"


async def test_retry_failed_alerts_resets_eligible_rows(
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    await insert(session_factory, 3, max_attempts=1)
    async with transaction(session_factory) as s:
        d = get_alert_driver(s)
        rows = await d.fetch_pending_alerts(T0 + timedelta(minutes=1), 10)
        for r in rows[:2]:
            await d.update_alert_failed(r, T0, "x")
    now = T0 + timedelta(hours=1)
    async with transaction(session_factory) as s:
        assert await get_alert_driver(s).retry_failed_alerts(2, now) == 2
    async with transaction(session_factory) as s:
        due = await get_alert_driver(s).fetch_pending_alerts(now, 10)
        assert len(due) == 3
        retried = [r for r in due if r.attempts == 1]
        assert len(retried) == 2 and all(r.max_attempts == 3 for r in retried)
    # Fail all three again: the two retried rows (attempts 2 < max 3) still have headroom
    # without extra retries, the untouched one (attempts 1, max 1) needs one more.
    async with transaction(session_factory) as s:
        d = get_alert_driver(s)
        for r in await d.fetch_pending_alerts(now, 10):
            await d.update_alert_failed(r, now, "x")
    async with transaction(session_factory) as s:
        assert await get_alert_driver(s).retry_failed_alerts(0, now) == 2
        assert await get_alert_driver(s).retry_failed_alerts(1, now) == 1


async def test_retry_failed_skips_rows_overtaken_by_newer_same_labels(
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    async with transaction(session_factory) as s:
        d = get_alert_driver(s)
        old = await d.insert_alert(payload(), "disable", None, None, fingerprint="f", now=T0)
    async with transaction(session_factory) as s:
        (row,) = await get_alert_driver(s).fetch_pending_alerts(T0, 1)
        await get_alert_driver(s).update_alert_failed(row, T0, "x")
        await get_alert_driver(s).insert_alert(payload(), "enable", None, None, fingerprint="f")
    async with transaction(session_factory) as s:
        assert await get_alert_driver(s).retry_failed_alerts(5, T0) == 0
    assert old.id


async def test_purge_old_alerts_deletes_in_batches_only_matching_rows(
    session_factory: async_sessionmaker[AsyncSession], engine: Any
) -> None:
    await insert(session_factory, 12)
    async with transaction(session_factory) as s:
        d = get_alert_driver(s)
        for r in await d.fetch_pending_alerts(T0 + timedelta(minutes=1), 10):
            await d.update_alert_sent(r, T0)
    statements: list[str] = []
    from sqlalchemy import event

    def record(*args: Any) -> None:
        if args[2].lstrip().upper().startswith("DELETE"):
            statements.append(args[2])

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    async with transaction(session_factory) as s:
        deleted = await get_alert_driver(s).purge_old_alerts(
            T0 + timedelta(seconds=8), ["sent", "failed"], batch_size=3
        )
    event.remove(engine.sync_engine, "before_cursor_execute", record)
    # Rows 0..7 are older than the cutoff and sent; rows 10, 11 are pending and stay.
    assert deleted == 8
    assert len(statements) == 3  # batches of 3, 3, 2
    assert await count(session_factory) == 4
    assert await count(session_factory, status="pending") == 2


async def test_driver_never_commits(session_factory: async_sessionmaker[AsyncSession]) -> None:
    ids = await insert(session_factory, 2)
    async with session_factory() as s:
        await s.begin()
        d = get_alert_driver(s)
        await d.insert_alert(payload("X"), "disable", "cb", None)
        rows = await d.fetch_pending_alerts(T0 + timedelta(minutes=1), 10)
        await d.update_alert_sent(rows[0], T0)
        await d.update_alert_failed(rows[1], T0, "x")
        await d.retry_failed_alerts(1, T0)
        await d.purge_old_alerts(T0 + timedelta(days=1), ["sent"])
        await s.rollback()
    assert await count(session_factory) == 2
    assert await count(session_factory, status="pending") == 2
    assert ids


async def test_claim_leases_rows_and_expired_lease_is_reclaimed(
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    await insert(session_factory, 3)
    now = T0 + timedelta(minutes=1)
    lease = now + timedelta(seconds=30)
    async with transaction(session_factory) as s:
        first = await get_alert_driver(s).alerts_claim(now, 2, lease, 1, "w1")
    assert [c.attempts for c in first] == [1, 1] and not any(c.reclaimed for c in first)
    async with transaction(session_factory) as s:
        d = get_alert_driver(s)
        again = await d.alerts_claim(now, 10, lease, 2, "w2")
        assert len(again) == 1  # the two leased rows are not due
        counts = await d.alerts_counts(now)
        assert (counts.due, counts.leased) == (0, 3)
    # The lease expires: the claim itself takes the rows back.
    later = lease + timedelta(seconds=1)
    async with transaction(session_factory) as s:
        reclaimed = await get_alert_driver(s).alerts_claim(later, 10, later, 3, "w3")
    assert {c.id for c in reclaimed} == {c.id for c in first} | {again[0].id}
    assert all(c.reclaimed for c in reclaimed)
    # The first worker comes back late: its outcome is fenced off.
    async with transaction(session_factory) as s:
        applied = await get_alert_driver(s).alerts_mark_sent([c.id for c in first], 1, now, [])
    assert applied == []
    assert await count(session_factory, status="sent") == 0


async def test_claim_skips_fingerprint_in_flight(
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    async with transaction(session_factory) as s:
        d = get_alert_driver(s)
        await d.insert_alert(payload(), "disable", None, None, fingerprint="f", now=T0)
        await d.insert_alert(payload(), "enable", None, None, fingerprint="f", now=T0)
    now = T0 + timedelta(minutes=1)
    async with transaction(session_factory) as s:
        first = await get_alert_driver(s).alerts_claim(now, 1, now + timedelta(seconds=30), 1, "w")
    async with transaction(session_factory) as s:
        second = await get_alert_driver(s).alerts_claim(
            now, 10, now + timedelta(seconds=30), 2, "w"
        )
    assert len(first) == 1 and second == []


async def test_record_methods_apply_with_current_token(
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    await insert(session_factory, 4)
    now = T0 + timedelta(minutes=1)
    async with transaction(session_factory) as s:
        c = await get_alert_driver(s).alerts_claim(now, 4, now + timedelta(seconds=30), 7, "w")
    ids = [x.id for x in c]
    async with transaction(session_factory) as s:
        d = get_alert_driver(s)
        assert await d.alerts_mark_sent(ids[:1], 7, now, ["am1"]) == ids[:1]
        nxt = now + timedelta(minutes=2)
        assert await d.alerts_schedule_retry(ids[1:2], 7, nxt, "HTTP 503", ["am1"]) == ids[1:2]
        assert await d.alerts_mark_failed(ids[2:3], 7, "HTTP 400", []) == ids[2:3]
        assert await d.alerts_release(ids[3:], 7, now) == 1
    async with session_factory() as s:
        d = get_alert_driver(s)
        rows = {i: await d.alerts_get(i) for i in ids}
    assert rows[ids[0]].status == "sent" and rows[ids[0]].sent_at == now  # type: ignore[union-attr]
    assert rows[ids[0]].delivered_to == ["am1"]  # type: ignore[union-attr]
    r1 = rows[ids[1]]
    assert r1 is not None and r1.status == "pending" and r1.leased_until is None
    assert r1.next_attempt_at == now + timedelta(minutes=2) and r1.last_error == "HTTP 503"
    assert rows[ids[2]].status == "failed"  # type: ignore[union-attr]
    r3 = rows[ids[3]]
    assert r3 is not None and r3.attempts == 0 and r3.next_attempt_at == now


async def test_supersede_older_retires_pending_rows_of_same_fingerprint(
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    async with transaction(session_factory) as s:
        d = get_alert_driver(s)
        a = await d.insert_alert(payload(), "disable", None, None, fingerprint="f")
        b = await d.insert_alert(payload("B"), "disable", None, None, fingerprint="g")
        c = await d.insert_alert(payload(), "enable", None, None, fingerprint="f")
        assert await d.alerts_supersede_older(["f"], datetime.now(UTC)) == 1
    async with session_factory() as s:
        d = get_alert_driver(s)
        statuses = [(await d.alerts_get(i)).status for i in (a.id, b.id, c.id)]  # type: ignore[union-attr]
    assert statuses == ["superseded", "pending", "pending"]
