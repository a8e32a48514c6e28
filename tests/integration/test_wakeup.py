"""An idle worker learns of new rows without waiting for its poll: on SQLite from
``PRAGMA data_version`` (another connection or process committed), and from a producer of
its own process directly (:mod:`alertq.wakeup`, what the relay calls after its commit).

Split by test tier: these are the integration tests; see also ``tests/unit/test_wakeup.py``.
"""

from __future__ import annotations

import asyncio
import sqlite3
import statistics
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from alertq import wakeup
from alertq.config import Settings
from alertq.db import (
    EnqueueListener,
    SqliteChangeWatcher,
    create_engine,
    create_session_factory,
    read_transaction,
    transaction,
)
from alertq.driver import get_queue_driver
from alertq.engine import AlertWorker
from alertq.enqueue import enqueue_alert
from tests.support.clock import FakeClock
from tests.support.stub import StubAlertmanager

Factory = async_sessionmaker[AsyncSession]


sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


# Far longer than any deadline below: a pickup within the deadline is not the poll's.
POLL = 60.0


DEADLINE = 5.0


def alert(name: str) -> list[dict[str, Any]]:
    return [{"labels": {"alertname": name}}]


async def until(condition: Callable[[], bool], what: str, deadline: float = DEADLINE) -> float:
    """Poll ``condition`` until true; returns the seconds it took, fails after ``deadline``."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > deadline:
            raise AssertionError(f"not within {deadline}s: {what}")
        await asyncio.sleep(0.01)  # poll interval of the check itself
    return time.monotonic() - start


@asynccontextmanager
async def idle_worker(
    settings: Settings, factory: Factory, **kw: Any
) -> AsyncIterator[AlertWorker]:
    """A running worker that has found nothing to do and is waiting."""
    worker = AlertWorker(settings, factory, **kw)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        await until(lambda: worker.stats.idle_waits >= 1, "the worker went idle")
        yield worker
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


@sqlite_only
async def test_an_idle_sqlite_worker_picks_up_another_connections_commit_without_polling(
    db_url: str, stub: StubAlertmanager, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ALERTQ_SQLITE_WAKE_INTERVAL", "0.05")
    settings = Settings(database_url=db_url, alertmanager_urls=[stub.url], poll_interval=POLL)
    assert settings.sqlite_wake_interval == 0.05
    worker_engine = create_engine(settings)
    # The producer has its own engine: its commit reaches the worker only through the file,
    # as a producer in another process does.
    producer_engine = create_engine(Settings(database_url=db_url))
    try:
        async with idle_worker(settings, create_session_factory(worker_engine)):
            async with transaction(create_session_factory(producer_engine)) as s:
                await enqueue_alert(s, alert("FromElsewhere"), "disable")
            took = await until(lambda: stub.requests == 1, "the alert was delivered")
    finally:
        await worker_engine.dispose()
        await producer_engine.dispose()
    assert [a["labels"]["alertname"] for a in stub.received_alerts()] == ["FromElsewhere"]
    assert took < DEADLINE


@sqlite_only
async def test_enqueue_in_the_workers_own_process_wakes_it_on_commit(
    db_url: str, stub: StubAlertmanager
) -> None:
    # Neither the poll nor the data_version watch (60 s each) can explain a quick pickup.
    settings = Settings(
        database_url=db_url,
        alertmanager_urls=[stub.url],
        poll_interval=POLL,
        sqlite_wake_interval=POLL,
        concurrency=1,
    )
    engine = create_engine(settings)
    factory = create_session_factory(engine)
    try:
        async with idle_worker(settings, factory) as worker:
            async with transaction(factory) as s:
                await enqueue_alert(s, alert("SameProcess"), "disable")
                # Not before the commit: the worker could not see the row yet.
                assert worker.stats.idle_waits == 1
            await until(lambda: stub.requests == 1, "the alert was delivered")
    finally:
        await engine.dispose()
    assert [a["labels"]["alertname"] for a in stub.received_alerts()] == ["SameProcess"]


@sqlite_only
async def test_wake_workers_after_a_commit_wakes_them_from_any_thread(
    db_url: str, stub: StubAlertmanager
) -> None:
    # What the relay does: commit rows by its own statements, then call wake_workers(),
    # here from a worker thread, as a sync producer would.
    settings = Settings(
        database_url=db_url,
        alertmanager_urls=[stub.url],
        poll_interval=POLL,
        sqlite_wake_interval=POLL,
        concurrency=1,
    )
    engine = create_engine(settings)
    factory = create_session_factory(engine)
    try:
        async with idle_worker(settings, factory):
            async with transaction(factory) as s:
                await get_queue_driver(s).alerts_insert(alert("Relayed"), "relay", None, None)
            assert wakeup.has_subscribers()
            await asyncio.to_thread(wakeup.wake_workers)
            await until(lambda: stub.requests == 1, "the alert was delivered")
    finally:
        await engine.dispose()
    assert not wakeup.has_subscribers()  # the worker unsubscribed when it stopped


@sqlite_only
async def test_an_idle_workers_look_at_the_queue_does_not_wait_for_the_write_lock(
    db_url: str,
) -> None:
    # A producer holds SQLite's write lock; the worker's read of the queue counts still
    # answers at once (it used to begin IMMEDIATE and queue behind every writer).
    settings = Settings(database_url=db_url, sqlite_busy_timeout_ms=200)
    engine = create_engine(settings)
    factory = create_session_factory(engine)
    writer = sqlite3.connect(make_url(db_url).database or "", isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")
        async with read_transaction(factory) as s:
            counts = await get_queue_driver(s).alerts_counts(datetime.now(UTC))
        assert (counts.due, counts.leased) == (0, 0)
        with pytest.raises(OperationalError, match="locked"):
            async with transaction(factory) as s:
                await get_queue_driver(s).alerts_counts(datetime.now(UTC))
    finally:
        writer.execute("ROLLBACK")
        writer.close()
        await engine.dispose()


@sqlite_only
async def test_a_write_transaction_gets_the_lock_within_milliseconds_of_its_release(
    db_url: str,
) -> None:
    # SQLite's busy handler tries again 1, 2, 5, ... 25, 50, 100 ms apart: after 450 ms
    # behind another writer its next try came about 80 ms after the release, and a writer
    # that waits behind a steady producer kept missing the gaps between its commits.
    engine = create_engine(Settings(database_url=db_url))
    factory = create_session_factory(engine)
    holder = sqlite3.connect(make_url(db_url).database or "", isolation_level=None)

    async def write() -> float:
        async with transaction(factory) as s:
            await s.execute(text("SELECT 1"))  # the session begins here
            return time.monotonic()

    lags = []
    try:
        await write()  # the pool's connection is open: the wait below is the lock's alone
        for _ in range(3):
            holder.execute("BEGIN IMMEDIATE")
            started = time.monotonic()
            waiter = asyncio.create_task(write())
            await asyncio.sleep(0.45)  # how long the other writer holds the lock
            released = time.monotonic()
            holder.execute("COMMIT")
            got = await asyncio.wait_for(waiter, DEADLINE)
            assert got - started >= 0.45  # it did wait for the lock
            lags.append(got - released)
    finally:
        holder.close()
        await engine.dispose()
    assert statistics.median(lags) < 0.03, lags


@sqlite_only
async def test_a_woken_idle_loop_leaves_new_rows_to_the_loop_in_a_cycle(
    db_url: str, stub: StubAlertmanager
) -> None:
    # SQLite has one writer: a second loop that claims each new row for itself only
    # contends with the first for the lock, and both deliver batches of one or two. The
    # loop whose POST is in flight takes the new rows with its record's claim instead.
    gate = threading.Event()
    stub.script(lambda _alerts: (200, "") if gate.wait(DEADLINE) else (500, "gate"))
    settings = Settings(
        database_url=db_url, alertmanager_urls=[stub.url], poll_interval=POLL, concurrency=2
    )
    worker_engine = create_engine(settings)
    producer_engine = create_engine(Settings(database_url=db_url))
    producer = create_session_factory(producer_engine)

    async def enqueue(name: str) -> None:
        async with transaction(producer) as s:
            await enqueue_alert(s, alert(name), "disable")

    try:
        async with idle_worker(settings, create_session_factory(worker_engine)) as worker:
            await enqueue("First")
            await until(lambda: stub.requests == 1, "the first POST is in flight")
            await enqueue("Second")
            await enqueue("Third")
            left = worker.stats.left_to_cycling_loop
            worker.wake()  # as the data_version watch does for these commits
            await until(
                lambda: stub.requests > 1 or worker.stats.left_to_cycling_loop > left,
                "the idle loop claimed or went back to waiting",
            )
            assert stub.requests == 1  # the other loop did not claim Second for itself
            gate.set()
            await until(lambda: len(stub.received_alerts()) == 3, "every alert was delivered")
    finally:
        gate.set()
        await worker_engine.dispose()
        await producer_engine.dispose()
    batches = [[a["labels"]["alertname"] for a in r or []] for r in stub.received]
    assert batches == [["First"], ["Second", "Third"]]


@pytest.fixture
def no_wake_sources(monkeypatch: pytest.MonkeyPatch) -> None:
    """No LISTEN connection and no change watch: only the poll finds work, and no late
    connect wakes the loops in the middle of a test."""

    async def nothing(_self: object) -> None:
        return None

    monkeypatch.setattr(EnqueueListener, "start", nothing)
    monkeypatch.setattr(SqliteChangeWatcher, "start", nothing)


def polling_settings(db_url: str, stub: StubAlertmanager) -> Settings:
    return Settings(
        database_url=db_url,
        alertmanager_urls=[stub.url],
        alertmanager_timeout=60,
        lease_seconds=120,
        poll_interval=0.02,
        concurrency=3,
    )


async def test_only_the_lookout_loop_looks_while_idle_and_its_look_is_a_read(
    db_url: str, stub: StubAlertmanager, no_wake_sources: None
) -> None:
    settings = polling_settings(db_url, stub)
    engine = create_engine(settings)
    try:
        async with idle_worker(settings, create_session_factory(engine)) as worker:
            # Past the start (a claim per loop, and on SQLite a loop's turn left to another).
            await until(lambda: worker.stats.idle_looks >= 10, "ten idle looks")
            claims = worker.stats.claims
            await until(lambda: worker.stats.idle_looks >= 40, "thirty more idle looks")
            # The looks were reads, by one loop: no loop claimed meanwhile.
            assert worker.stats.claims == claims
    finally:
        await engine.dispose()
    assert stub.requests == 0


@asynccontextmanager
async def hung_polling_worker(
    db_url: str, stub: StubAlertmanager, rows: list[tuple[str, float]]
) -> AsyncIterator[FakeClock]:
    """:func:`polling_settings`' worker, idle, over ``rows`` (alertname, seconds until
    due by the worker's clock); every POST hangs until the stub stops. Yields the clock."""
    settings = polling_settings(db_url, stub)
    engine = create_engine(settings)
    factory = create_session_factory(engine)
    clock = FakeClock()
    async with transaction(factory) as s:
        for name, seconds in rows:
            await enqueue_alert(
                s, alert(name), "disable", now=clock.now + timedelta(seconds=seconds)
            )
    stub.hang(60)
    try:
        async with idle_worker(settings, factory, clock=clock) as worker:
            await until(lambda: worker.stats.idle_looks >= 5, "five idle looks")
            try:
                yield clock
            finally:
                stub.stop()  # releases the hung POSTs, so the worker can stop
    finally:
        await engine.dispose()


async def test_rows_the_lookouts_look_finds_wake_the_other_loops(
    db_url: str, stub: StubAlertmanager, no_wake_sources: None
) -> None:
    # Rows that come due by time alone (as retries do): only the lookout's look sees them.
    # Every POST hangs: three in flight at once need three loops.
    backlog = [(f"Later{i}", 60.0) for i in range(3 * 256)]
    async with hung_polling_worker(db_url, stub, backlog) as clock:
        clock.advance(61)
        three = await stub.wait_for_requests_async(3, within=DEADLINE)
    assert three, f"{stub.requests} POST(s) in flight, not 3"


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
async def test_while_the_lookout_is_busy_another_loop_looks(
    db_url: str, stub: StubAlertmanager, no_wake_sources: None
) -> None:
    # The lookout's POST hangs; a row that then comes due by time alone is taken by
    # another loop within its poll. (On SQLite the others leave new rows to the loop in
    # a cycle by design: one writer.)
    async with hung_polling_worker(db_url, stub, [("First", 30.0), ("Second", 60.0)]) as clock:
        clock.advance(31)  # the lookout's look finds First, and its POST hangs
        assert await stub.wait_for_requests_async(1, within=DEADLINE)
        clock.advance(30)
        two = await stub.wait_for_requests_async(2, within=DEADLINE)
    assert two, "Second waited for the busy lookout"


async def test_due_rows_blocked_by_labels_in_flight_do_not_wake_the_other_loops(
    db_url: str, stub: StubAlertmanager, no_wake_sources: None
) -> None:
    # A newer row of labels another worker has in flight is due but cannot be claimed:
    # each look finds it "due" and the lookout's claim finds nothing. The lookout alone
    # claims; waking the other loops each time would have them claim nothing too.
    settings = polling_settings(db_url, stub)
    engine = create_engine(settings)
    factory = create_session_factory(engine)
    now = datetime.now(UTC)
    async with transaction(factory) as s:
        await enqueue_alert(s, alert("InFlight"), "disable", now=now)
    async with transaction(factory) as s:
        held = await get_queue_driver(s).alerts_claim(now, 1, now + timedelta(hours=1), 7, "other")
    assert len(held) == 1
    async with transaction(factory) as s:
        await enqueue_alert(s, alert("InFlight"), "enable", now=now)  # waits behind it
    try:
        async with idle_worker(settings, factory) as worker:
            await until(lambda: worker.stats.idle_looks >= 10, "ten idle looks")
            looks, claims = worker.stats.idle_looks, worker.stats.claims
            await until(lambda: worker.stats.idle_looks >= looks + 30, "thirty more looks")
            # One claim per look, by the lookout, not one per loop (+1: a look is counted
            # before its claim, so a snapshot can fall between the two).
            assert worker.stats.claims - claims <= worker.stats.idle_looks - looks + 1
    finally:
        await engine.dispose()
    assert stub.requests == 0
