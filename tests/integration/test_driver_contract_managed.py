"""The driver contract, continued: the managed-alert and heartbeat driver and the relay's
intake driver, on SQLite and PostgreSQL (the fixtures are in ``conftest.py``).

``test_driver_contract.test_every_driver_method_is_exercised_by_this_module`` reads this
module too: a method of any driver class with no test in either fails it.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from alertq.config import Settings
from alertq.db import create_engine, create_session_factory
from alertq.driver import get_breaker_driver, get_managed_driver
from alertq.driver.intake import IntakeDriver, IntakeRow
from alertq.models import CostSimAlertQueueModel, HeartbeatModel, ManagedAlertModel
from tests.integration.test_driver_contract import (
    T0,
    add,
    alert,
    claim,
    fresh,
)

Q = CostSimAlertQueueModel
M = ManagedAlertModel
H = HeartbeatModel


def managed(fp: str, *, state: str = "firing", at: Any = T0, **kw: Any) -> dict[str, Any]:
    """The columns of one managed alert (``managed_insert``'s keywords)."""
    return {
        "fingerprint": fp,
        "labels": {"alertname": fp},
        "state": state,
        "starts_at": at,
        "firing_type": "managed_firing",
        "resolving_type": "managed_resolved",
        "created_at": at,
        "updated_at": at,
        **kw,
    }


async def insert_managed(session: AsyncSession, *alerts: dict[str, Any]) -> None:
    driver = get_managed_driver(session)
    for values in alerts:
        assert await driver.managed_insert(**values)


async def pages(fetch: Any, key: str, size: int) -> list[list[str]]:
    """Every page of a keyset-paginated list, following ``key`` of each page's last item."""
    out: list[list[str]] = []
    after = None
    while page := [getattr(r, key) for r in await fetch(size, after)]:
        out.append(page)
        after = page[-1]
        assert len(out) <= 100, "the cursor does not advance"
    return out


# ============================================================================ managed alerts


async def test_managed_insert_is_race_free_and_get_reads_it(tx: AsyncSession) -> None:
    driver = get_managed_driver(tx)
    assert await driver.managed_insert(**managed("f1"))
    assert not await driver.managed_insert(**managed("f1", state="resolved"))
    got = await driver.managed_get("f1")
    assert got is not None and (got.state, got.labels, got.annotations) == (
        "firing",
        {"alertname": "f1"},
        {},
    )
    assert got.starts_at == T0 and got.starts_at.tzinfo is not None
    assert await driver.managed_get("nope") is None


async def test_managed_update_sets_columns_and_lock_reads_them_fresh(tx: AsyncSession) -> None:
    driver = get_managed_driver(tx)
    await insert_managed(tx, managed("f1"), managed("f2"))
    first = await driver.managed_get("f1")
    assert first is not None
    later = T0 + timedelta(minutes=5)
    await driver.managed_update(first.id, state="resolved", resolved_at=later, keepalive_at=later)
    locked = await driver.managed_lock("f1")
    assert locked is not None and (locked.state, locked.resolved_at) == ("resolved", later)
    other = await driver.managed_get("f2")
    assert other is not None and other.state == "firing"  # only the one row
    assert await driver.managed_lock("nope") is None


async def test_managed_list_is_firing_first_then_newest_and_filters_by_state(
    tx: AsyncSession,
) -> None:
    await insert_managed(
        tx,
        managed("r-old", state="resolved", at=T0),
        managed("f-old", at=T0),
        managed("r-new", state="resolved", at=T0 + timedelta(hours=1)),
        managed("f-new", at=T0 + timedelta(hours=1)),
    )
    driver = get_managed_driver(tx)
    assert [m.fingerprint for m in await driver.managed_list()] == [
        "f-new",
        "f-old",
        "r-new",
        "r-old",
    ]
    assert [m.fingerprint for m in await driver.managed_list(state="resolved")] == [
        "r-new",
        "r-old",
    ]
    assert [m.fingerprint for m in await driver.managed_list(limit=1)] == ["f-new"]


async def test_managed_list_pages_by_keyset_cover_every_alert_once_in_order(
    tx: AsyncSession,
) -> None:
    # Ties in starts_at (the id breaks them) and both states, so every branch of the
    # keyset condition is crossed by some page boundary.
    await insert_managed(
        tx,
        *(managed(f"f{i}", at=T0 + timedelta(minutes=i // 3)) for i in range(7)),
        *(managed(f"r{i}", state="resolved", at=T0 + timedelta(minutes=i // 2)) for i in range(5)),
    )
    driver = get_managed_driver(tx)
    whole = [m.fingerprint for m in await driver.managed_list(limit=100)]
    # Newest first; equal starts_at, the later insert (higher id) first.
    assert whole == [f"f{i}" for i in range(6, -1, -1)] + [f"r{i}" for i in range(4, -1, -1)]
    for size in (1, 2, 3, 5, 12):
        got = await pages(lambda n, a: driver.managed_list(limit=n, after=a), "fingerprint", size)
        assert [f for page in got for f in page] == whole, size
        assert all(len(p) == size for p in got[:-1])
    firing = await pages(
        lambda n, a: driver.managed_list(state="firing", limit=n, after=a), "fingerprint", 2
    )
    assert [f for page in firing for f in page] == whole[:7]
    assert await driver.managed_list(after="unknown") == []


async def test_managed_counts_counts_by_state(tx: AsyncSession) -> None:
    driver = get_managed_driver(tx)
    assert await driver.managed_counts() == {}
    await insert_managed(tx, managed("a"), managed("b"), managed("c", state="resolved"))
    assert await driver.managed_counts() == {"firing": 2, "resolved": 1}


async def test_managed_lock_due_takes_the_due_oldest_first_with_their_current_row(
    tx: AsyncSession,
) -> None:
    firing_row, resolving_row = await add(tx, 2)
    await insert_managed(
        tx,
        managed("due-firing", keepalive_at=T0 + timedelta(seconds=2), firing_row_id=firing_row),
        managed(
            "due-resolved",
            state="resolved",
            keepalive_at=T0 + timedelta(seconds=1),
            firing_row_id=firing_row,
            resolving_row_id=resolving_row,
        ),
        managed("due-no-row", keepalive_at=T0 + timedelta(seconds=3)),
        managed("later", keepalive_at=T0 + timedelta(hours=1)),
        managed("never", keepalive_at=None),
    )
    (claimed,) = await claim(tx, T0 + timedelta(minutes=1), 1)  # the firing row: leased
    assert claimed.id == firing_row
    driver = get_managed_driver(tx)
    now = T0 + timedelta(minutes=1)
    due = await driver.managed_lock_due(now, 10)
    assert [d.alert.fingerprint for d in due] == ["due-resolved", "due-firing", "due-no-row"]
    assert [d.row_status for d in due] == ["pending", "pending", None]
    assert due[1].row_last_attempt_at == now and due[1].row_last_attempt_at.tzinfo is not None
    assert due[0].row_last_attempt_at is None and due[2].row_sent_at is None
    assert [d.alert.fingerprint for d in await driver.managed_lock_due(now, 1)] == ["due-resolved"]


async def test_managed_set_keepalive_many_sets_both_and_keeps_last_sent_without_one(
    tx: AsyncSession,
) -> None:
    await insert_managed(tx, managed("a"), managed("b", last_sent_at=T0))
    driver = get_managed_driver(tx)
    a, b = await driver.managed_get("a"), await driver.managed_get("b")
    assert a is not None and b is not None
    await driver.managed_set_keepalive_many([])  # nothing to do
    nxt, sent = T0 + timedelta(minutes=1), T0 + timedelta(seconds=30)
    await driver.managed_set_keepalive_many(
        [
            {"m_id": a.id, "next_at": nxt, "sent_at": sent},
            {"m_id": b.id, "next_at": None, "sent_at": None},
        ]
    )
    a, b = await driver.managed_get("a"), await driver.managed_get("b")
    assert a is not None and (a.keepalive_at, a.last_sent_at) == (nxt, sent)
    assert b is not None and (b.keepalive_at, b.last_sent_at) == (None, T0)


async def test_managed_incidents_lock_returns_the_incidents_that_exist(tx: AsyncSession) -> None:
    breaker = get_breaker_driver(tx)
    for incident in ("i1", "i2"):
        await breaker.incidents_insert(
            id=incident, circuit_breaker_name="cb", reason="r", severity="P2", timestamp=T0
        )
    driver = get_managed_driver(tx)
    assert await driver.managed_incidents_lock([]) == set()
    assert await driver.managed_incidents_lock(["i1", "i2", "gone"]) == {"i1", "i2"}


# ============================================================================ heartbeats


async def test_heartbeats_ping_creates_then_renews_keeping_its_creation(tx: AsyncSession) -> None:
    driver = get_managed_driver(tx)
    assert await driver.heartbeats_get("job") is None
    await driver.heartbeats_ping("job", 60.0, {"team": "a"}, T0)
    hb = await driver.heartbeats_get("job")
    assert hb is not None
    assert (hb.state, hb.window_seconds, hb.labels) == ("ok", 60.0, {"team": "a"})
    assert hb.deadline == T0 + timedelta(seconds=60) and hb.created_at == T0
    assert await driver.heartbeats_mark_missing(hb.id, "fp-missing")
    later = T0 + timedelta(hours=1)
    await driver.heartbeats_ping("job", 30.0, {}, later)
    hb = await driver.heartbeats_lock("job")
    assert hb is not None
    assert (hb.state, hb.missing_fingerprint, hb.window_seconds, hb.labels) == ("ok", None, 30, {})
    assert (hb.last_ping_at, hb.deadline, hb.created_at) == (
        later,
        later + timedelta(seconds=30),
        T0,
    )
    assert await driver.heartbeats_lock("nope") is None


async def test_heartbeats_lock_overdue_takes_ok_ones_past_their_deadline_oldest_first(
    tx: AsyncSession,
) -> None:
    driver = get_managed_driver(tx)
    for name, window in (("b", 20.0), ("a", 10.0), ("c", 3600.0), ("m", 1.0)):
        await driver.heartbeats_ping(name, window, {}, T0)
    m = await driver.heartbeats_get("m")
    assert m is not None and await driver.heartbeats_mark_missing(m.id, "fp")
    now = T0 + timedelta(minutes=1)
    assert [h.name for h in await driver.heartbeats_lock_overdue(now, 10)] == ["a", "b"]
    assert [h.name for h in await driver.heartbeats_lock_overdue(now, 1)] == ["a"]


async def test_heartbeats_mark_missing_flips_only_once(tx: AsyncSession) -> None:
    driver = get_managed_driver(tx)
    await driver.heartbeats_ping("job", 1.0, {}, T0)
    hb = await driver.heartbeats_get("job")
    assert hb is not None
    assert await driver.heartbeats_mark_missing(hb.id, "fp1")
    assert not await driver.heartbeats_mark_missing(hb.id, "fp2")
    hb = await driver.heartbeats_get("job")
    assert hb is not None and (hb.state, hb.missing_fingerprint) == ("missing", "fp1")


async def test_heartbeats_list_is_missing_first_then_by_name_and_pages_by_keyset(
    tx: AsyncSession,
) -> None:
    driver = get_managed_driver(tx)
    for name in ("e", "b", "d", "a", "c", "f"):
        await driver.heartbeats_ping(name, 1.0, {}, T0)
    for name in ("d", "b"):
        hb = await driver.heartbeats_get(name)
        assert hb is not None and await driver.heartbeats_mark_missing(hb.id, f"fp-{name}")
    whole = [h.name for h in await driver.heartbeats_list()]
    assert whole == ["b", "d", "a", "c", "e", "f"]
    for size in (1, 2, 4, 6):
        got = await pages(driver.heartbeats_list, "name", size)
        assert [n for page in got for n in page] == whole, size
    assert await driver.heartbeats_list(10, "unknown") == []


# ============================================================================ PostgreSQL locks


async def test_every_locking_pass_skips_what_another_transaction_holds(pg_committed: str) -> None:
    """Keep-alive and the heartbeat watch may run in several processes: a second pass
    skips the rows the first holds instead of waiting for them or taking them twice."""
    engine = create_engine(Settings(database_url=pg_committed))
    factory = create_session_factory(engine)
    try:
        async with factory.begin() as s:
            await insert_managed(
                s, *(managed(f"m{i}", keepalive_at=T0 + timedelta(seconds=i)) for i in range(4))
            )
            for name in ("h0", "h1", "h2"):
                await get_managed_driver(s).heartbeats_ping(name, 1.0, {}, T0)
            await get_breaker_driver(s).incidents_insert(
                id="i1", circuit_breaker_name="cb", reason="r", severity="P2", timestamp=T0
            )
        now = T0 + timedelta(minutes=1)
        async with factory() as first, factory() as second:
            await first.begin()
            await second.begin()
            one, two = get_managed_driver(first), get_managed_driver(second)
            taken = [d.alert.fingerprint for d in await one.managed_lock_due(now, 2)]
            rest = [d.alert.fingerprint for d in await two.managed_lock_due(now, 10)]
            assert (taken, rest) == (["m0", "m1"], ["m2", "m3"])
            hb_taken = [h.name for h in await one.heartbeats_lock_overdue(now, 1)]
            hb_rest = [h.name for h in await two.heartbeats_lock_overdue(now, 10)]
            assert sorted(hb_taken + hb_rest) == ["h0", "h1", "h2"] and len(hb_taken) == 1
            assert await one.managed_incidents_lock(["i1"]) == {"i1"}
            assert await two.managed_incidents_lock(["i1"]) == set()
            await first.rollback()
            await second.rollback()
    finally:
        await engine.dispose()


# ============================================================================ intake driver


def intake_rows(*fps: str) -> list[IntakeRow]:
    return [IntakeRow(alert(f"A{fp}"), fp) for fp in fps]


async def insert_many(session: AsyncSession, *fps: str, now: Any = T0, **kw: Any) -> int:
    values = {"alert_type": "relay", "max_attempts": 7, "source_addr": None, "source_agent": None}
    return await IntakeDriver(session).alerts_insert_many(
        intake_rows(*fps), now=now, **{**values, **kw}
    )


async def rows_of(session: AsyncSession, alert_type: str = "relay") -> list[Q]:
    stmt = select(Q).where(Q.alert_type == alert_type).order_by(Q.id)
    return list((await session.scalars(stmt.execution_options(populate_existing=True))).all())


async def test_alerts_insert_many_stores_due_rows_and_retires_older_unleased_ones(
    tx: AsyncSession,
) -> None:
    assert await insert_many(tx) == 0
    assert await insert_many(tx, "fa", "fb", "fc", source_addr="10.0.0.1", source_agent="am") == 3
    (leased,) = await claim(tx, T0, 1)  # "fa": in flight, its outcome comes first
    (other_type,) = await add(tx, 1, fingerprint="fb")  # another producer's: not retired
    later = T0 + timedelta(seconds=5)
    assert await insert_many(tx, "fa", "fb", now=later) == 2
    assert (await fresh(tx, other_type)).status == "pending"
    rows = await rows_of(tx)
    got = [(r.fingerprint, r.status, r.created_at) for r in rows]
    assert got == [
        ("fa", "pending", T0),
        ("fb", "superseded", T0),
        ("fc", "pending", T0),
        ("fa", "pending", later),
        ("fb", "pending", later),
    ]
    assert rows[0].id == leased.id and rows[0].leased_until is not None
    new = rows[-1]
    assert (new.payload, new.max_attempts, new.attempts, new.next_attempt_at) == (
        alert("Afb"),
        7,
        0,
        later,
    )
    assert (rows[2].source_addr, rows[2].source_agent) == ("10.0.0.1", "am")


@pytest.mark.parametrize("fps", [("f", "f"), ("", "g"), ("a,b",)])
async def test_alerts_insert_many_refuses_a_bad_batch_before_any_statement(
    tx: AsyncSession, fps: tuple[str, ...]
) -> None:
    with pytest.raises(ValueError, match="alerts_insert_many"):
        await insert_many(tx, *fps)
    assert await rows_of(tx) == []


async def test_ping_answers_on_every_backend(tx: AsyncSession) -> None:
    await IntakeDriver(tx).ping()


async def test_intake_sources_groups_rows_by_sender_most_recent_first(tx: AsyncSession) -> None:
    await insert_many(tx, "a1", "a2", source_addr="10.0.0.1", source_agent="prom")
    await insert_many(
        tx, "b1", source_addr="10.0.0.2", source_agent=None, now=T0 + timedelta(minutes=1)
    )
    await tx.execute(update(Q).where(Q.fingerprint == "a2").values(status="sent"))
    await add(tx, 1)  # another alert type: not the relay's
    driver = IntakeDriver(tx)
    got = [
        (s.addr, s.agent, s.rows, s.pending, s.last_at)
        for s in await driver.intake_sources("relay", 10)
    ]
    assert got == [
        ("10.0.0.2", None, 1, 1, T0 + timedelta(minutes=1)),
        ("10.0.0.1", "prom", 2, 1, T0),
    ]
    assert len(await driver.intake_sources("relay", 1)) == 1


async def test_alerts_latest_sent_is_the_newest_sent_row_of_each_label_set_by_keyset(
    tx: AsyncSession,
) -> None:
    await insert_many(tx, "a", "b", "c", "d")
    await insert_many(tx, "a", "c", now=T0 + timedelta(seconds=1))  # retire the older a, c
    rows = {(r.fingerprint, r.created_at): r for r in await rows_of(tx)}
    sent = [rows["a", T0 + timedelta(seconds=1)], rows["b", T0], rows["d", T0]]
    for r in sent:
        await tx.execute(update(Q).where(Q.id == r.id).values(status="sent"))
    # "c": its newest row is pending, so the worker delivers it; "old": before ``since``.
    await insert_many(tx, "old", now=T0 - timedelta(hours=1))
    await tx.execute(update(Q).where(Q.fingerprint == "old").values(status="sent"))
    driver = IntakeDriver(tx)
    got = await driver.alerts_latest_sent("relay", T0, 0, 10)
    assert [g.id for g in got] == sorted(r.id for r in sent)
    assert got[0].payload == rows["b", T0].payload and got[0].created_at == T0
    first, *rest = got
    assert [g.id for g in await driver.alerts_latest_sent("relay", T0, first.id, 10)] == [
        g.id for g in rest
    ]
    assert len(await driver.alerts_latest_sent("relay", T0, 0, 1)) == 1
    assert await driver.alerts_latest_sent("other", T0, 0, 10) == []
