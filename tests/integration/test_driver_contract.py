"""The driver contract: every method of the queue, breaker and seed drivers, run against
SQLite and PostgreSQL.

As in River's ``riverdrivertest``: each test gets a session inside a transaction that is
rolled back afterwards (the ``tx`` fixture), so tests share one database per backend and
leave nothing behind. Tests that need several connections (concurrent claims, locks held
by another transaction) commit, and empty the tables when they are done.
"""

from __future__ import annotations

import ast
import asyncio
import importlib
import inspect
import pkgutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

import alertq.driver
from alertq.config import Settings
from alertq.db import create_engine, create_session_factory, transaction
from alertq.driver import (
    NOTIFY_CHANNEL,
    AlertDriver,
    Outcome,
    QueueDriver,
    get_alert_driver,
    get_breaker_driver,
    get_queue_driver,
)
from alertq.models import CostSimAlertQueueModel, CostSimCBStateModel

Q = CostSimAlertQueueModel
Factory = async_sessionmaker[AsyncSession]
T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
LEASE = timedelta(seconds=30)


def alert(name: str = "A", **labels: str) -> list[dict[str, Any]]:
    return [{"labels": {"alertname": name, **labels}, "annotations": {"summary": name}}]


async def fresh(session: AsyncSession, alert_id: int) -> Q:
    """The row as stored now (bulk updates do not refresh loaded objects)."""
    stmt = select(Q).where(Q.id == alert_id).execution_options(populate_existing=True)
    return (await session.scalars(stmt)).one()


async def add(
    session: AsyncSession, n: int = 1, *, at: datetime = T0, prefix: str = "A", **kw: Any
) -> list[int]:
    """``n`` pending rows due one second apart from ``at``, each with its own fingerprint."""
    queue = get_queue_driver(session)
    ids = []
    for i in range(n):
        kw.setdefault("fingerprint", None)
        fp = kw["fingerprint"] if kw["fingerprint"] is not None else f"{prefix}{i}"
        row = await queue.alerts_insert(
            alert(f"{prefix}{i}"),
            "disable",
            "cb",
            None,
            fingerprint=fp,
            now=at + timedelta(seconds=i),
            max_attempts=kw.get("max_attempts"),
        )
        ids.append(row.id)
    return ids


async def claim(
    session: AsyncSession, now: datetime, n: int = 256, token: int = 1, worker: str = "w"
) -> list[Any]:
    return await get_queue_driver(session).alerts_claim(now, n, now + LEASE, token, worker)


# ============================================================================ queue driver


async def test_alerts_insert_stores_a_pending_row_with_aware_timestamps(tx: AsyncSession) -> None:
    queue = get_queue_driver(tx)
    row = await queue.alerts_insert(
        alert(), "disable", "cb", "inc1", fingerprint="fp", max_attempts=3, now=T0
    )
    got = await queue.alerts_get(row.id)
    assert got is not None and got.payload == alert()
    assert (got.alert_type, got.circuit_breaker_name, got.incident_id) == ("disable", "cb", "inc1")
    assert (got.status, got.attempts, got.max_attempts, got.fingerprint) == ("pending", 0, 3, "fp")
    assert got.created_at == T0 == got.next_attempt_at and got.created_at.tzinfo is not None
    assert got.delivered_to == [] and got.leased_until is None
    assert await queue.alerts_get(row.id + 1000) is None


@pytest.mark.parametrize("notify", [False, True])
async def test_alerts_enqueue_retires_older_unleased_rows_of_its_fingerprint(
    tx: AsyncSession, notify: bool
) -> None:
    queue = get_queue_driver(tx)
    old = await queue.alerts_enqueue(
        alert(), "disable", "cb", None, fingerprint="f", now=T0, max_attempts=5
    )
    (leased,) = await add(tx, 1, fingerprint="g", at=T0 - timedelta(seconds=1))
    assert [c.id for c in await claim(tx, T0, 1)] == [leased]
    new = await queue.alerts_enqueue(
        alert(), "enable", "cb", "inc", fingerprint="f", now=T0, max_attempts=5, notify=notify
    )
    newer_g = await queue.alerts_enqueue(
        alert("G"), "enable", None, None, fingerprint="g", now=T0, max_attempts=5, notify=notify
    )
    assert new.id > old.id
    assert (new.status, new.max_attempts, new.incident_id, new.fingerprint) == (
        "pending",
        5,
        "inc",
        "f",
    )
    assert await queue.alerts_get(new.id) is new  # attached to the session
    assert (await fresh(tx, old.id)).status == "superseded"
    assert (await fresh(tx, leased)).status == "pending"  # leased: its outcome comes first
    assert (await fresh(tx, newer_g.id)).status == "pending"


async def test_alerts_notify_is_accepted_by_every_backend(tx: AsyncSession) -> None:
    await get_queue_driver(tx).alerts_notify()  # SQLite: nothing to do; PostgreSQL: queued


async def test_alerts_claim_leases_due_rows_oldest_due_first(tx: AsyncSession) -> None:
    ids = await add(tx, 4, at=T0)
    (later,) = await add(tx, 1, at=T0 + timedelta(hours=1), prefix="L")
    now = T0 + timedelta(minutes=1)
    first = await get_queue_driver(tx).alerts_claim(now, 3, now + LEASE, 42, "worker-1")
    assert [c.id for c in first] == ids[:3]
    c = first[0]
    assert (c.attempts, c.max_attempts, c.reclaimed, c.alert_type) == (1, 10, False, "disable")
    assert c.payload == alert("A0") and c.fingerprint == "A0" and c.delivered_to == []
    assert c.created_at == T0 and c.incident_id is None
    stored = await fresh(tx, c.id)
    assert (stored.lease_token, stored.leased_by, stored.leased_until) == (
        42,
        "worker-1",
        now + LEASE,
    )
    assert stored.next_attempt_at == now + LEASE and stored.last_attempt_at == now
    rest = await claim(tx, now, 10, token=43)
    assert [r.id for r in rest] == [ids[3]] and later not in {r.id for r in rest}
    assert await claim(tx, now, 10, token=44) == []


async def test_alerts_claim_skips_a_fingerprint_in_flight_and_reclaims_expired_leases(
    tx: AsyncSession,
) -> None:
    a, b = await add(tx, 2, fingerprint="same")
    now = T0 + timedelta(minutes=1)
    assert [c.id for c in await claim(tx, now, 1, token=1)] == [a]
    assert await claim(tx, now, 10, token=2) == []  # b waits while a is in flight
    expired = now + LEASE + timedelta(seconds=1)
    got = await claim(tx, expired, 10, token=3)
    # a's lease ran out: a is due again (reclaimed from a dead worker) and b no longer
    # waits. One claim may hold both: the engine delivers only the newest of them.
    assert [(c.id, c.reclaimed, c.attempts) for c in got] == [(a, True, 2), (b, False, 1)]
    assert sorted(await get_queue_driver(tx).alerts_mark_sent([a, b], 3, expired, [])) == [a, b]


async def test_alerts_claim_skips_only_fingerprints_in_flight_never_rows_without_one(
    tx: AsyncSession,
) -> None:
    # Rows without a fingerprint have no order to keep: one in flight holds back none.
    queue = get_queue_driver(tx)
    bare = [
        (await queue.alerts_insert(alert(f"N{i}"), "disable", None, None, now=T0)).id
        for i in range(2)
    ]
    x, x2 = await add(tx, 2, at=T0 + timedelta(seconds=1), fingerprint="x")
    now = T0 + timedelta(minutes=1)
    assert [c.id for c in await claim(tx, now, 1, token=1)] == [bare[0]]
    assert [c.id for c in await claim(tx, now, 1, token=2)] == [bare[1]]
    # In flight now: two rows without a fingerprint; "x" waits for its older twin only.
    assert [c.id for c in await claim(tx, now, 1, token=3)] == [x]
    assert await claim(tx, now, 10, token=4) == []
    expired = now + LEASE + timedelta(seconds=1)
    assert [c.id for c in await claim(tx, expired, 10, token=5)] == [*bare, x, x2]


async def test_alerts_record_methods_apply_only_with_the_current_lease_token(
    tx: AsyncSession,
) -> None:
    queue = get_queue_driver(tx)
    ids = await add(tx, 5)
    now = T0 + timedelta(minutes=1)
    await claim(tx, now, 5, token=7)
    later = now + timedelta(minutes=2)
    assert await queue.alerts_mark_sent(ids[:1], 8, now, ["am"]) == []
    assert await queue.alerts_schedule_retry(ids[1:2], 8, later, "e", []) == []
    assert await queue.alerts_mark_failed(ids[2:3], 8, "e", []) == []
    assert await queue.alerts_mark_superseded(ids[3:4], 8, "r") == []
    assert await queue.alerts_release(ids[4:], 8, now) == 0
    assert await queue.alerts_mark_sent(ids[:1], 7, now, ["am"]) == ids[:1]
    assert await queue.alerts_schedule_retry(ids[1:2], 7, later, "HTTP 503", ["am"]) == ids[1:2]
    assert await queue.alerts_mark_failed(ids[2:3], 7, "HTTP 400", ["am"]) == ids[2:3]
    assert await queue.alerts_mark_superseded(ids[3:4], 7, "newer") == ids[3:4]
    assert await queue.alerts_release(ids[4:], 7, now) == 1
    assert await queue.alerts_mark_sent([], 7, now, []) == []
    rows = [await fresh(tx, i) for i in ids]
    assert [r.status for r in rows] == ["sent", "pending", "failed", "superseded", "pending"]
    assert all(r.leased_until is None and r.leased_by is None for r in rows)
    assert rows[0].sent_at == now and rows[0].delivered_to == ["am"] and rows[0].last_error is None
    assert (rows[1].next_attempt_at, rows[1].last_error, rows[1].attempts) == (later, "HTTP 503", 1)
    assert rows[2].last_error == "HTTP 400" and rows[3].last_error == "newer"
    assert (rows[4].attempts, rows[4].next_attempt_at) == (0, now)  # released: uncounted
    # Recording twice changes nothing: the row is no longer pending.
    assert await queue.alerts_mark_failed(ids[:1], 7, "late", []) == []


async def test_alerts_record_writes_every_outcome_in_one_call_fenced_by_the_token(
    tx: AsyncSession,
) -> None:
    queue = get_queue_driver(tx)
    ids = await add(tx, 5)
    now = T0 + timedelta(minutes=1)
    claimed = await claim(tx, now, 5, token=7)
    assert [c.alert_count for c in claimed] == [1] * 5
    later = now + timedelta(minutes=2)
    outcomes = [
        Outcome(ids[0], "sent", None, ("am",), sent_at=now),
        Outcome(ids[1], "pending", "HTTP 503", ("am",), next_attempt_at=later),
        Outcome(ids[2], "failed", "HTTP 400", ()),
        Outcome(ids[3], "superseded", "newer", None),
    ]
    assert await queue.alerts_record(8, outcomes) == []  # another claim's token
    assert await queue.alerts_record(7, []) == []
    assert await queue.alerts_record(7, outcomes) == ids[:4]
    rows = [await fresh(tx, i) for i in ids]
    assert [r.status for r in rows] == ["sent", "pending", "failed", "superseded", "pending"]
    assert all(r.leased_until is None and r.leased_by is None for r in rows[:4])
    assert rows[4].leased_until == now + LEASE  # not in the call: still leased
    assert rows[0].sent_at == now and rows[0].delivered_to == ["am"] and rows[0].last_error is None
    assert (rows[1].next_attempt_at, rows[1].last_error, rows[1].delivered_to) == (
        later,
        "HTTP 503",
        ["am"],
    )
    assert (rows[2].last_error, rows[2].delivered_to) == ("HTTP 400", [])
    # None leaves a column as the claim left it.
    assert (rows[3].last_error, rows[3].delivered_to, rows[3].sent_at) == ("newer", [], None)
    assert rows[3].next_attempt_at == now + LEASE
    # Done rows are no longer pending: recording again reaches only the retried one.
    assert await queue.alerts_record(7, outcomes) == [ids[1]]


async def test_alerts_supersede_older_retires_only_unleased_older_pending_rows(
    tx: AsyncSession,
) -> None:
    queue = get_queue_driver(tx)
    a1, a2, a3 = await add(tx, 3, fingerprint="a")
    (b,) = await add(tx, 1, fingerprint="b", prefix="B")
    now = T0 + timedelta(minutes=1)
    assert [c.id for c in await claim(tx, now, 1)] == [a1]
    assert await queue.alerts_supersede_older([], now) == 0
    assert await queue.alerts_supersede_older(["a", "b"], now) == 1
    statuses = [(await fresh(tx, i)).status for i in (a1, a2, a3, b)]
    assert statuses == ["pending", "superseded", "pending", "pending"]
    # Once a1's lease has expired it is unleased, and older than a3.
    assert await queue.alerts_supersede_older(["a"], now + LEASE) == 1
    assert (await fresh(tx, a1)).status == "superseded"


async def test_alerts_counts_due_leased_and_next_due(tx: AsyncSession) -> None:
    queue = get_queue_driver(tx)
    now = T0 + timedelta(minutes=1)
    assert await queue.alerts_counts(now) == type(await queue.alerts_counts(now))(0, 0, None)
    await add(tx, 3, at=T0)
    await add(tx, 1, at=T0 + timedelta(hours=2), prefix="F")
    await claim(tx, now, 1)
    counts = await queue.alerts_counts(now)
    assert (counts.due, counts.leased) == (2, 1)
    assert counts.next_due_at == now + LEASE  # the lease's end is the earliest future due


async def test_alerts_rearm_makes_a_sent_row_pending_unless_a_newer_row_has_its_labels(
    tx: AsyncSession,
) -> None:
    queue = get_queue_driver(tx)
    a, b = await add(tx, 2)
    now = T0 + timedelta(minutes=1)
    await claim(tx, now, 2)
    await queue.alerts_mark_sent([a, b], 1, now, ["am"])
    later = now + timedelta(hours=1)
    assert await queue.alerts_rearm([(a, alert("Fresh"))], later) == [a]
    row = await fresh(tx, a)
    assert (row.status, row.attempts, row.payload, row.delivered_to) == (
        "pending",
        0,
        alert("Fresh"),
        [],
    )
    assert row.next_attempt_at == later == row.created_at
    assert not await queue.alerts_rearm([(a, alert())], later)  # pending: on its way already
    await queue.alerts_insert(alert("A1"), "enable", None, None, fingerprint="A1", now=later)
    assert not await queue.alerts_rearm([(b, alert())], later)  # overtaken by a newer row


async def test_alerts_rearm_takes_back_a_superseded_row_once_the_newer_one_is_done(
    tx: AsyncSession,
) -> None:
    queue = get_queue_driver(tx)
    (a,) = await add(tx, 1, fingerprint="f")
    newer = await queue.alerts_enqueue(
        alert(), "app", None, None, fingerprint="f", now=T0, max_attempts=5
    )
    assert (await fresh(tx, a)).status == "superseded"
    later = T0 + timedelta(hours=1)
    assert await queue.alerts_rearm([(a, alert("A"))], later) == []  # newer still pending
    now = T0 + timedelta(minutes=1)
    assert [c.id for c in await claim(tx, now, 1)] == [newer.id]
    await queue.alerts_mark_sent([newer.id], 1, now, ["am"])
    assert await queue.alerts_rearm([(a, alert("A"))], later) == [a]
    assert (await fresh(tx, a)).status == "pending"


async def test_alerts_rearm_takes_a_batch_in_one_call_and_returns_the_ids_it_rearmed(
    tx: AsyncSession,
) -> None:
    queue = get_queue_driver(tx)
    a, b, c = await add(tx, 3)
    now = T0 + timedelta(minutes=1)
    await claim(tx, now, 3)
    await queue.alerts_mark_sent([a, b], 1, now, ["am"])
    later = now + timedelta(hours=1)
    rearmed = await queue.alerts_rearm([(a, alert("A")), (b, alert("B")), (c, alert())], later)
    assert sorted(rearmed) == [a, b]  # c is still leased (pending): not re-armed
    assert [(await fresh(tx, i)).payload for i in (a, b)] == [alert("A"), alert("B")]
    assert await queue.alerts_rearm([], later) == []


async def test_alerts_update_pending_rewrites_only_a_waiting_unleased_row(tx: AsyncSession) -> None:
    queue = get_queue_driver(tx)
    a, b = await add(tx, 2)
    assert await queue.alerts_update_pending(a, alert("New"))
    assert (await fresh(tx, a)).payload == alert("New")
    await claim(tx, T0 + timedelta(minutes=1), 2)
    assert not await queue.alerts_update_pending(b, alert("New"))  # leased: on its way
    assert (await fresh(tx, b)).payload == alert("A1")


async def test_alerts_delete_done_deletes_only_finished_rows(tx: AsyncSession) -> None:
    queue = get_queue_driver(tx)
    a, b = await add(tx, 2)
    now = T0 + timedelta(minutes=1)
    await claim(tx, now, 1)
    await queue.alerts_mark_sent([a], 1, now, ["am"])
    assert await queue.alerts_delete_done([a, b]) == 1
    remaining = (await tx.scalars(select(Q.id).where(Q.id.in_([a, b])))).all()
    assert list(remaining) == [b]
    assert await queue.alerts_delete_done([]) == 0


async def test_alerts_stats_counts_each_status_and_the_oldest_pending(tx: AsyncSession) -> None:
    queue = get_queue_driver(tx)
    empty = await queue.alerts_stats()
    assert (empty["pending"], empty["sent"], empty["failed"], empty["total"]) == (0, 0, 0, 0)
    assert empty["oldest_pending_created_at"] is None and empty["oldest_pending_due_at"] is None
    ids = await add(tx, 4)
    now = T0 + timedelta(minutes=1)
    await claim(tx, now, 2)
    await queue.alerts_mark_sent(ids[:1], 1, now, [])
    await queue.alerts_mark_superseded(ids[1:2], 1, "r")
    stats = await queue.alerts_stats()
    assert (stats["pending"], stats["sent"], stats["superseded"], stats["total"]) == (2, 1, 1, 4)
    assert stats["oldest_pending_created_at"] == T0 + timedelta(seconds=2)
    assert stats["oldest_pending_due_at"] == T0 + timedelta(seconds=2)


async def test_alerts_retry_failed_gives_more_attempts_except_to_overtaken_rows(
    tx: AsyncSession,
) -> None:
    queue = get_queue_driver(tx)
    ids = await add(tx, 3, max_attempts=1)
    now = T0 + timedelta(minutes=1)
    await claim(tx, now, 3)
    await queue.alerts_mark_failed(ids, 1, "boom", [])
    await queue.alerts_insert(alert("A2"), "enable", None, None, fingerprint="A2", now=now)
    assert await queue.alerts_retry_failed(0, now) == 0  # attempts (1) not below 1 + 0
    assert await queue.alerts_retry_failed(2, now, ids=ids[:1]) == 1
    assert await queue.alerts_retry_failed(2, now) == 1  # ids[2] is overtaken by a newer row
    rows = [await fresh(tx, i) for i in ids]
    assert [r.status for r in rows] == ["pending", "pending", "failed"]
    assert rows[0].max_attempts == 3 and rows[0].next_attempt_at == now


async def test_alerts_purge_batch_walks_the_key_and_keeps_other_statuses(tx: AsyncSession) -> None:
    queue = get_queue_driver(tx)
    ids = await add(tx, 5)
    now = T0 + timedelta(minutes=1)
    await claim(tx, now, 5)
    await queue.alerts_mark_sent(ids[:4], 1, now, [])
    cutoff = T0 + timedelta(seconds=3)  # rows 0-2 are older
    assert await queue.alerts_purge_batch(cutoff, ["sent"], 0, 2) == (2, ids[1])
    assert await queue.alerts_purge_batch(cutoff, ["sent"], ids[1], 2) == (1, ids[2])
    assert await queue.alerts_purge_batch(cutoff, ["sent"], ids[2], 2) == (0, ids[2])
    left = await queue.alerts_list(limit=10)
    assert [r.id for r in left] == [ids[4], ids[3]]


async def test_alerts_list_newest_first_by_status_with_keyset_pages(tx: AsyncSession) -> None:
    queue = get_queue_driver(tx)
    ids = await add(tx, 5)
    now = T0 + timedelta(minutes=1)
    await claim(tx, now, 1)
    await queue.alerts_mark_failed(ids[:1], 1, "x", [])
    assert [r.id for r in await queue.alerts_list(limit=2)] == [ids[4], ids[3]]
    assert [r.id for r in await queue.alerts_list(limit=2, before_id=ids[3])] == [ids[2], ids[1]]
    assert [r.id for r in await queue.alerts_list("failed")] == [ids[0]]
    assert await queue.alerts_list("sent") == []


# ============================================================================ breaker driver


async def new_incident(session: AsyncSession, incident_id: str, name: str = "cb", **kw: Any) -> Any:
    values: dict[str, Any] = {
        "id": incident_id,
        "circuit_breaker_name": name,
        "timestamp": T0,
        "reason": "drift",
        "severity": "P2",
        "resolved": False,
        "alert_sent": False,
    }
    values.update(kw)
    return await get_breaker_driver(session).incidents_insert(**values)


async def test_states_are_created_once_locked_read_listed_and_updated(tx: AsyncSession) -> None:
    breaker = get_breaker_driver(tx)
    assert await breaker.states_get("b") is None and await breaker.states_lock("b") is None
    await breaker.states_ensure("b", T0)
    await breaker.states_ensure("b", T0 + timedelta(hours=1))  # exists: nothing changes
    await breaker.states_ensure("a", T0)
    state = await breaker.states_lock("b")
    assert state is not None and (state.disabled, state.consecutive_failures) == (False, 0)
    assert state.created_at == T0 == state.updated_at
    await breaker.states_update(state.id, disabled=True, disabled_reason="r", updated_at=T0)
    got = await breaker.states_get("b")
    assert got is not None and (got.disabled, got.disabled_reason) == (True, "r")
    assert [s.name for s in await breaker.states_list()] == ["a", "b"]


async def test_states_list_pages_by_name_and_lists_expired_ones_and_counts(
    tx: AsyncSession,
) -> None:
    breaker = get_breaker_driver(tx)
    for name in ("a", "b", "c", "d"):
        await breaker.states_ensure(name, T0)
    rows = {s.name: s for s in await breaker.states_list()}
    past, future = T0 - timedelta(minutes=5), T0 + timedelta(hours=1)
    await breaker.states_update(rows["a"].id, disabled=True, disabled_until=past)
    await breaker.states_update(rows["b"].id, disabled=True, disabled_until=None)
    await breaker.states_update(rows["c"].id, disabled=True, disabled_until=future)
    await new_incident(tx, "i1", "b")
    assert [s.name for s in await breaker.states_list(after="a", limit=2)] == ["b", "c"]
    assert [s.name for s in await breaker.states_list(after="d")] == []
    assert [s.name for s in await breaker.states_list_expired(T0, 10)] == ["a"]
    assert await breaker.states_list_expired(T0 - timedelta(hours=1), 10) == []
    # 4 breakers; open now: b (no TTL) and c (TTL ahead), not a (expired); 1 open incident.
    assert await breaker.states_counts(T0) == (4, 2, 1)


async def test_incidents_are_inserted_read_listed_and_resolved_once(tx: AsyncSession) -> None:
    breaker = get_breaker_driver(tx)
    first = await new_incident(tx, "i1", "cb1")
    await new_incident(tx, "i2", "cb2", timestamp=T0 + timedelta(minutes=1))
    await new_incident(tx, "i3", "cb1", timestamp=T0 + timedelta(minutes=2))
    assert first.id == "i1" and (await breaker.incidents_get("i1")) is not None
    assert await breaker.incidents_get("nope") is None
    assert [i.id for i in await breaker.incidents_list(None, False, 10)] == ["i3", "i2", "i1"]
    assert [i.id for i in await breaker.incidents_list("cb1", False, 1)] == ["i3"]
    assert [i.id for i in await breaker.incidents_list(None, False, 10, before="i3")] == [
        "i2",
        "i1",
    ]
    done = T0 + timedelta(hours=1)
    assert await breaker.incidents_resolve("i3", done, "ops", "fixed")
    assert not await breaker.incidents_resolve("i3", done, "ops", "again")
    assert not await breaker.incidents_resolve("nope", done, "ops", None)
    assert [i.id for i in await breaker.incidents_list("cb1", False, 10)] == ["i1"]
    assert [i.id for i in await breaker.incidents_list("cb1", True, 10)] == ["i3", "i1"]
    resolved = await breaker.incidents_get("i3")
    assert resolved is not None and resolved.resolved and resolved.resolved_at == done
    assert (resolved.resolved_by, resolved.resolution_notes) == ("ops", "fixed")


async def test_incident_alert_sent_is_set_once_and_the_last_response_kept(tx: AsyncSession) -> None:
    breaker = get_breaker_driver(tx)
    await new_incident(tx, "i1")
    assert await breaker.incidents_mark_alert_sent("i1", T0, "am: accepted")
    assert not await breaker.incidents_mark_alert_sent("i1", T0 + timedelta(minutes=1), "x")
    assert not await breaker.incidents_mark_alert_sent("nope", T0)
    assert await breaker.incidents_record_response("i1", "am: HTTP 503")
    assert not await breaker.incidents_record_response("nope", "x")
    inc = await breaker.incidents_get("i1")
    assert inc is not None and inc.alert_sent and inc.alert_sent_at == T0
    assert inc.alert_response == "am: HTTP 503"


# ============================================================================ seed driver


async def test_seed_methods_work_over_the_queue_driver(tx: AsyncSession) -> None:
    seed = get_alert_driver(tx)
    assert isinstance(seed, AlertDriver) and isinstance(seed, QueueDriver)
    row = await seed.insert_alert(alert(), "disable", "cb", "i1", fingerprint="f", now=T0)
    await seed.insert_alert(alert("B"), "disable", None, None, now=T0 + timedelta(seconds=1))
    await new_incident(tx, "i1")
    now = T0 + timedelta(minutes=1)
    due = await seed.fetch_pending_alerts(now, 1)
    assert [r.id for r in due] == [row.id]
    assert await seed.update_alert_retry(due[0], now, now + timedelta(minutes=5), "HTTP 503")
    assert due[0].attempts == 1 and due[0].next_attempt_at == now + timedelta(minutes=5)
    (other,) = await seed.fetch_pending_alerts(now, 10)
    assert await seed.update_alert_failed(other, now, "HTTP 400")
    assert await seed.retry_failed_alerts(1, now) == 1
    (other,) = await seed.fetch_pending_alerts(now, 10)
    assert await seed.update_alert_sent(other, now)
    assert await seed.mark_incident_alert_sent("i1", now, "ok")
    stats = await seed.fetch_queue_stats()
    assert (stats["pending"], stats["sent"], stats["oldest_pending"]) == (1, 1, T0)
    assert await seed.purge_old_alerts(now, ["sent"], batch_size=1) == 1


# ============================================================================ several connections


async def test_alerts_notify_and_enqueue_notify_reach_a_listener_on_commit(
    pg_committed: str,
) -> None:
    dsn = make_url(pg_committed).set(drivername="postgresql").render_as_string(False)
    heard: list[str] = []
    conn = await asyncpg.connect(dsn)
    await conn.add_listener(
        NOTIFY_CHANNEL, lambda _conn, _pid, channel, _payload: heard.append(channel)
    )
    engine = create_engine(Settings(database_url=pg_committed))
    factory = create_session_factory(engine)
    try:
        async with transaction(factory) as s:
            await get_queue_driver(s).alerts_notify()
        await wait_for(lambda: len(heard) == 1)
        async with transaction(factory) as s:
            await get_queue_driver(s).alerts_enqueue(
                alert(), "disable", None, None, fingerprint="f", now=T0, max_attempts=1, notify=True
            )
        await wait_for(lambda: len(heard) == 2)
        async with factory() as s:
            await s.begin()
            await get_queue_driver(s).alerts_notify()
            await s.rollback()  # a rolled-back transaction notifies no one
        async with transaction(factory) as s:
            await get_queue_driver(s).alerts_notify()
        # Notifications arrive in commit order: had the rollback notified, this would be 4.
        await wait_for(lambda: len(heard) >= 3)
        assert heard == [NOTIFY_CHANNEL] * 3
    finally:
        await conn.close()
        await engine.dispose()


async def wait_for(condition: Any, within: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_concurrent_alerts_claim_on_postgres_is_disjoint_and_loses_no_row(
    pg_committed: str,
) -> None:
    engine = create_engine(Settings(database_url=pg_committed, db_pool_size=8))
    factory = create_session_factory(engine)
    total = 600
    try:
        async with transaction(factory) as s:
            await add(s, total)
        now = T0 + timedelta(hours=1)
        start = asyncio.Event()

        async def worker(n: int) -> list[int]:
            got: list[int] = []
            await start.wait()
            while True:
                async with transaction(factory) as s:
                    rows = await claim(s, now, 16, token=n + 1, worker=f"w{n}")
                if not rows:
                    return got
                got += [r.id for r in rows]

        tasks = [asyncio.create_task(worker(n)) for n in range(6)]
        start.set()
        claims = await asyncio.wait_for(asyncio.gather(*tasks), 60)
        every = [i for c in claims for i in c]
        assert len(every) == total and len(set(every)) == total  # disjoint, nothing lost
        assert sum(1 for c in claims if c) >= 2  # the claims really ran side by side
        async with factory() as s:
            stats = await get_queue_driver(s).alerts_stats()
            counts = await get_queue_driver(s).alerts_counts(now)
        assert stats["pending"] == total and (counts.due, counts.leased) == (0, total)
    finally:
        await engine.dispose()


async def test_alerts_claim_skips_rows_another_open_transaction_holds(pg_committed: str) -> None:
    engine = create_engine(Settings(database_url=pg_committed))
    factory = create_session_factory(engine)
    try:
        async with transaction(factory) as s:
            ids = await add(s, 10)
        now = T0 + timedelta(minutes=1)
        async with factory() as s1, factory() as s2:
            await s1.begin()
            await s2.begin()
            first = await claim(s1, now, 6, token=1)
            # s1 has not committed: its rows are locked, not yet leased. s2 must skip them
            # at once, not wait for s1.
            second = await asyncio.wait_for(claim(s2, now, 6, token=2), 5)
            assert [c.id for c in first] == ids[:6] and [c.id for c in second] == ids[6:]
            await s2.commit()
            await s1.rollback()
        async with transaction(factory) as s:
            again = await claim(s, now, 10, token=3)
        assert [c.id for c in again] == ids[:6]  # s1 rolled back: its rows are due again
    finally:
        await engine.dispose()


async def test_states_ensure_is_safe_when_two_transactions_race(pg_committed: str) -> None:
    engine = create_engine(Settings(database_url=pg_committed))
    factory = create_session_factory(engine)
    try:

        async def ensure() -> None:
            async with transaction(factory) as s:
                await get_breaker_driver(s).states_ensure("raced", T0)

        await asyncio.wait_for(asyncio.gather(*(ensure() for _ in range(5))), 30)
        async with factory() as s:
            states = await get_breaker_driver(s).states_list()
        assert [x.name for x in states] == ["raced"]
        assert isinstance(states[0], CostSimCBStateModel)
    finally:
        await engine.dispose()


# ============================================================================ coverage


def test_every_driver_method_is_exercised_by_this_module() -> None:
    """A method added to any driver class (every ``*Driver`` of ``alertq.driver``'s
    modules, found, not listed) without a contract test here or in
    ``test_driver_contract_managed.py`` fails this test."""
    called = {
        node.attr
        for module in Path(__file__).parent.glob("test_driver_contract*.py")
        for node in ast.walk(ast.parse(module.read_text()))
        if isinstance(node, ast.Attribute)
    }
    drivers = {
        cls
        for info in pkgutil.iter_modules(alertq.driver.__path__, "alertq.driver.")
        for name, cls in inspect.getmembers(importlib.import_module(info.name), inspect.isclass)
        if name.endswith("Driver") and cls.__module__ == info.name
    }
    assert {c.__name__ for c in drivers} >= {
        "QueueDriver",
        "BreakerDriver",
        "AlertDriver",
        "ManagedDriver",
        "IntakeDriver",
    }
    methods = {
        f"{cls.__name__}.{name}"
        for cls in drivers
        for name, member in inspect.getmembers(cls, inspect.iscoroutinefunction)
        if not name.startswith("_")
    }
    assert len(methods) >= 60
    missing = sorted(m for m in methods if m.split(".")[1] not in called)
    assert missing == [], f"driver methods with no contract test: {missing}"
