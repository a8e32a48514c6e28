"""Acceptance: the real ``alertq worker`` delivers to a real Alertmanager, survives outages,
``kill -9`` and signals, and never delivers a row twice, on SQLite and PostgreSQL.

Workers run as ``python -m alertq worker`` child processes configured by environment
variables, except where a test needs the engine's injectable clock (outage) or per-worker
counters (many workers); those run :class:`AlertWorker` in-process.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import signal
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from alertq.config import Settings
from alertq.db import create_engine, create_session_factory, transaction
from alertq.delivery import AlertmanagerClient
from alertq.driver import get_alert_driver
from alertq.engine import AlertWorker
from alertq.enqueue import enqueue_alert
from alertq.models import CostSimAlertQueueModel
from tests.support.alertmanager import AlertmanagerProcess
from tests.support.clock import FakeClock
from tests.support.processes import alertq_env, run_alertq_async, start_alertq, wait_until
from tests.support.stub import StubAlertmanager

Factory = async_sessionmaker[AsyncSession]
Q = CostSimAlertQueueModel
LabelSet = frozenset[tuple[str, str]]


def labels_for(i: int, prefix: str = "Acc") -> dict[str, str]:
    """A distinct label set per ``i``, with values that must survive the trip verbatim."""
    return {
        "alertname": f"{prefix}{i}",
        "severity": ("P1", "P2", "P3")[i % 3],
        "instance": f"host-{i % 7}.example:9100",
        "component": "costsim ü ✓ \"quoted\" 'single' \\ ; DROP TABLE x; --",
        "circuit_breaker": f"cb_{i % 5}",
    }


def label_set(labels: dict[str, str]) -> LabelSet:
    return frozenset(labels.items())


async def enqueue_labelled(
    factory: Factory, n: int, *, prefix: str = "Acc", now: datetime | None = None
) -> list[dict[str, str]]:
    """Enqueue ``n`` one-alert rows with distinct label sets; returns the label sets."""
    sets = [labels_for(i, prefix) for i in range(n)]
    async with transaction(factory) as s:
        for labels in sets:
            payload = [{"labels": labels, "annotations": {"summary": labels["alertname"]}}]
            await enqueue_alert(s, payload, "disable", now=now, notify_throttle=1.0)
    return sets


async def all_rows(factory: Factory) -> list[CostSimAlertQueueModel]:
    async with factory() as s:
        return list((await s.scalars(select(Q).order_by(Q.id))).all())


async def all_sent(factory: Factory) -> bool:
    rows = await all_rows(factory)
    return bool(rows) and all(r.status == "sent" for r in rows)


def posted_label_sets(stub: StubAlertmanager, first_request: int = 0) -> Counter[LabelSet]:
    """How often each label set was POSTed to the stub (from request ``first_request`` on)."""
    counts: Counter[LabelSet] = Counter()
    for body in stub.received[first_request:]:
        for alert in body or []:
            counts[label_set(alert["labels"])] += 1
    return counts


def worker_env(db_url: str, *urls: str, **overrides: object) -> dict[str, str]:
    values: dict[str, object] = {
        "alertmanager_timeout": 2,
        "lease_seconds": 3,
        "poll_interval": 0.1,
        "log_level": "INFO",
    }
    values.update(overrides)
    return alertq_env(db_url, *urls, **values)


def claims_run() -> float:
    """Claim statements run by workers in this process so far."""
    return REGISTRY.get_sample_value("alertq_claims_total") or 0.0


def am_label_sets(am: AlertmanagerProcess) -> list[LabelSet]:
    return [label_set(a["labels"]) for a in am.alerts()]


# --------------------------------------------------------------------------- end to end


async def test_drain_delivers_500_alerts_to_a_real_alertmanager_with_identical_labels(
    db_url: str, session_factory: Factory, alertmanager: AlertmanagerProcess, tmp_path: Path
) -> None:
    sent = await enqueue_labelled(session_factory, 500)
    env = worker_env(db_url, alertmanager.url, alertmanager_timeout=10, lease_seconds=30)

    result = await run_alertq_async(["worker", "--drain"], env, cwd=tmp_path, within=60)

    assert result.returncode == 0, result.describe()
    rows = await all_rows(session_factory)
    assert len(rows) == 500
    assert all(r.status == "sent" and r.sent_at is not None for r in rows)
    expected = sorted(sorted(labels.items()) for labels in sent)
    await wait_until(
        lambda: len(alertmanager.alerts()) >= 500, within=10, message="alerts not listed"
    )
    # Full label dicts, compared exactly: nothing added, dropped or re-encoded.
    got = sorted(sorted(a["labels"].items()) for a in alertmanager.alerts())
    assert got == expected


# --------------------------------------------------------------------------- outage


async def test_outage_retries_with_growing_delays_then_delivers_everything_once(
    db_url: str, session_factory: Factory, alertmanager: AlertmanagerProcess
) -> None:
    clock = FakeClock()
    sent = await enqueue_labelled(session_factory, 20, now=clock.now)
    settings = Settings(
        database_url=db_url,
        alertmanager_urls=[alertmanager.url],
        alertmanager_timeout=2.0,
        lease_seconds=5.0,
        backoff_base=2.0,
        backoff_cap=300.0,
        max_attempts=10,
        concurrency=1,
        poll_interval=0.05,
    )
    worker = AlertWorker(settings, session_factory, clock=clock, rng=random.Random(7))
    alertmanager.stop()  # connection refused from now on

    gaps: dict[int, list[float]] = {}
    for attempt in range(1, 5):
        async with AlertmanagerClient.from_settings(settings) as client:
            assert await worker.run_once(client) == 20
            assert await worker.run_once(client) == 0  # nothing is due before its retry
        rows = await all_rows(session_factory)
        for r in rows:
            assert (r.status, r.attempts) == ("pending", attempt)
            assert r.last_error and alertmanager.url in r.last_error
            assert r.leased_until is None and r.last_attempt_at is not None
            gaps.setdefault(r.id, []).append(
                (r.next_attempt_at - r.last_attempt_at).total_seconds()
            )
        clock.now = max(r.next_attempt_at for r in rows)

    for row_id, row_gaps in gaps.items():
        assert all(b > a for a, b in itertools.pairwise(row_gaps)), (row_id, row_gaps)
    # Jitter spreads the retries of rows that failed together.
    assert len({round(g[-1], 6) for g in gaps.values()}) > 1

    alertmanager.start()  # same port
    await asyncio.wait_for(worker.run(asyncio.Event(), drain=True), 30)

    rows = await all_rows(session_factory)
    assert len(rows) == 20  # no row was duplicated in the queue
    assert {r.status for r in rows} == {"sent"}
    assert all(r.attempts == 5 and r.last_error is None for r in rows)
    am_sets = am_label_sets(alertmanager)
    assert sorted(am_sets, key=sorted) == sorted(map(label_set, sent), key=sorted)
    assert worker.stats.failed == 0


# --------------------------------------------------------------------------- kill -9


async def test_killed_worker_rows_are_redelivered_after_lease_by_another_worker(
    db_url: str, session_factory: Factory, stub: StubAlertmanager, tmp_path: Path
) -> None:
    sent = await enqueue_labelled(session_factory, 100)
    stub.hang(30)  # the first worker's POST stalls
    env = worker_env(db_url, stub.url, lease_seconds=3, alertmanager_timeout=2)

    with start_alertq(["worker"], env, cwd=tmp_path) as first:
        await wait_until(
            lambda: sum(posted_label_sets(stub).values()) >= 100 or not first.running,
            within=20,
            message=first.describe,
        )
        assert first.running, first.describe()
        first.kill9()  # mid-delivery: every row is in a POST that has not been answered
    rows = await all_rows(session_factory)
    assert all(r.status == "pending" and r.leased_by is not None for r in rows)
    lease_ends = {r.id: r.leased_until for r in rows}
    requests_before = stub.requests

    stub.reset()
    result = await run_alertq_async(["worker", "--drain"], env, cwd=tmp_path, within=40)

    assert result.returncode == 0, result.describe()
    rows = await all_rows(session_factory)
    assert len(rows) == 100 and {r.status for r in rows} == {"sent"}
    for r in rows:
        # Reclaimed only after the dead worker's lease ran out, as the second attempt.
        end = lease_ends[r.id]
        assert end is not None and r.last_attempt_at is not None and r.last_attempt_at >= end
        assert r.attempts == 2
    redelivered = posted_label_sets(stub, requests_before)
    assert set(redelivered) == set(map(label_set, sent))
    assert set(redelivered.values()) == {1}


# --------------------------------------------------------------------------- many workers


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
async def test_many_workers_on_postgres_deliver_each_row_exactly_once(
    db_url: str, session_factory: Factory, stub: StubAlertmanager
) -> None:
    sent = await enqueue_labelled(session_factory, 2000)
    stub.respond(200, delay=0.02)  # keep loops overlapping
    settings = Settings(
        database_url=db_url,
        alertmanager_urls=[stub.url],
        alertmanager_timeout=10.0,
        lease_seconds=60.0,
        batch_size=40,
        concurrency=2,
        poll_interval=0.05,
    )
    engines = [create_engine(settings) for _ in range(3)]
    try:
        workers = [
            AlertWorker(settings, create_session_factory(e), worker_id=f"w{i}")
            for i, e in enumerate(engines)
        ]
        await asyncio.wait_for(
            asyncio.gather(*(w.run(asyncio.Event(), drain=True) for w in workers)), 90
        )
    finally:
        for e in engines:
            await e.dispose()

    posted = posted_label_sets(stub)
    assert set(posted) == set(map(label_set, sent))
    duplicates = {k: v for k, v in posted.items() if v != 1}
    assert not duplicates, f"{len(duplicates)} label sets posted more than once"
    assert await all_sent(session_factory)
    assert [w.stats.sent > 0 for w in workers] == [True] * 3  # they really competed
    assert sum(w.stats.sent for w in workers) == 2000
    assert sum(w.stats.reclaimed + w.stats.fenced for w in workers) == 0


async def test_a_row_waiting_behind_its_in_flight_predecessor_does_not_make_idle_loops_spin(
    db_url: str, session_factory: Factory, stub: StubAlertmanager
) -> None:
    """A due row the claim must skip (same labels in flight) is no reason to poll again at
    once: the idle loop waits for its poll interval (or a wake-up) like any idle loop."""
    firing = [{"labels": {"alertname": "Breaker", "cb": "x"}}]
    async with transaction(session_factory) as s:
        await enqueue_alert(s, firing, "disable")
    stub.hang(30)
    settings = Settings(
        database_url=db_url,
        alertmanager_urls=[stub.url],
        alertmanager_timeout=10.0,
        lease_seconds=20.0,
        concurrency=2,
        poll_interval=30.0,
    )
    worker = AlertWorker(settings, session_factory)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        assert await stub.wait_for_requests_async(1, within=10)
        async with transaction(session_factory) as s:
            await enqueue_alert(s, [{**firing[0], "endsAt": "2026-01-01T00:00:00Z"}], "enable")
        before = claims_run()
        worker.wake()  # the idle loop looks, finds only the blocked row, and must rest
        # Absence of a busy loop cannot be awaited: watch a short, bounded window.
        await asyncio.sleep(0.5)
        assert claims_run() - before <= 3, "idle loop polls without pause"
    finally:
        stop.set()
        stub.stop()  # releases the hung POST so the worker can finish
        await asyncio.wait_for(task, 30)


# --------------------------------------------------------------------------- signals


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_signal_finishes_in_flight_delivery_records_it_and_exits_0(
    db_url: str,
    session_factory: Factory,
    stub: StubAlertmanager,
    tmp_path: Path,
    sig: signal.Signals,
) -> None:
    sent = await enqueue_labelled(session_factory, 10)
    stub.hang(1.0)  # answers 200 after a second
    env = worker_env(db_url, stub.url, lease_seconds=30, alertmanager_timeout=10)

    with start_alertq(["worker"], env, cwd=tmp_path) as worker:
        assert await stub.wait_for_requests_async(1, within=20), worker.describe()
        worker.send_signal(sig)
        code = await worker.wait_async(20)
        assert code == 0, worker.describe()

    rows = await all_rows(session_factory)
    assert [(r.status, r.leased_until) for r in rows] == [("sent", None)] * 10
    posted = posted_label_sets(stub)  # each in-flight POST answered once, none repeated
    assert set(posted) == set(map(label_set, sent)) and set(posted.values()) == {1}


# --------------------------------------------------------------------------- --drain


async def test_drain_exits_on_an_idle_queue_without_waiting_for_later_retries(
    db_url: str, session_factory: Factory, stub: StubAlertmanager, tmp_path: Path
) -> None:
    now = datetime.now(UTC)
    later = now + timedelta(hours=1)
    await enqueue_labelled(session_factory, 3, prefix="Later", now=later)
    env = worker_env(db_url, stub.url)

    result = await run_alertq_async(["worker", "--drain"], env, cwd=tmp_path, within=20)

    assert result.returncode == 0, result.describe()
    assert stub.requests == 0
    rows = await all_rows(session_factory)
    assert [(r.status, r.attempts, r.next_attempt_at) for r in rows] == [("pending", 0, later)] * 3


async def test_drain_exits_at_once_on_an_empty_queue(
    db_url: str, stub: StubAlertmanager, tmp_path: Path
) -> None:
    result = await run_alertq_async(
        ["worker", "--drain"], worker_env(db_url, stub.url), cwd=tmp_path, within=20
    )
    assert result.returncode == 0, result.describe()
    assert stub.requests == 0


async def test_drain_waits_for_a_dead_workers_lease_and_reclaims_its_rows(
    db_url: str, session_factory: Factory, stub: StubAlertmanager, tmp_path: Path
) -> None:
    sent = await enqueue_labelled(session_factory, 5)
    now = datetime.now(UTC)
    lease_end = now + timedelta(seconds=3)
    # A worker claims the rows and dies before recording anything.
    async with transaction(session_factory) as s:
        claimed = await get_alert_driver(s).alerts_claim(now, 100, lease_end, 4242, "dead:1")
    assert len(claimed) == 5

    result = await run_alertq_async(
        ["worker", "--drain"], worker_env(db_url, stub.url), cwd=tmp_path, within=30
    )

    assert result.returncode == 0, result.describe()
    rows = await all_rows(session_factory)
    for r in rows:
        assert (r.status, r.attempts) == ("sent", 2)
        assert r.last_attempt_at is not None and r.last_attempt_at >= lease_end
    posted = posted_label_sets(stub)
    assert set(posted) == set(map(label_set, sent)) and set(posted.values()) == {1}
