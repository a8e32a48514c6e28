"""Managed alerts' Python API on real databases: fire is idempotent and keeps startsAt,
resolve says when there is nothing to do, validation happens before any SQL, the caller's
transaction owns the outcome, and the synchronous form works from plain sync code."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

import alertq
from alertq import managed
from alertq.alerts import InvalidAlertPayload, label_fingerprint
from alertq.config import Settings
from alertq.db import create_engine, create_session_factory
from alertq.managed import ManagedAlerts
from alertq.models import CostSimAlertQueueModel, HeartbeatModel, ManagedAlertModel
from tests.support.clock import FakeClock

Factory = async_sessionmaker[AsyncSession]
Q = CostSimAlertQueueModel
DISK = {"alertname": "DiskFull", "host": "db1"}


def parse(ts: str) -> datetime:
    return datetime.fromisoformat(ts)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime(2026, 3, 1, 12, 0, tzinfo=UTC))


@pytest.fixture
def service(db_url: str, session_factory: Factory, clock: FakeClock) -> ManagedAlerts:
    return ManagedAlerts(Settings(database_url=db_url), session_factory, clock=clock)


async def queue_rows(factory: Factory) -> list[Q]:
    async with factory() as s:
        return list((await s.scalars(select(Q).order_by(Q.id))).all())


async def managed_rows(factory: Factory) -> list[ManagedAlertModel]:
    async with factory() as s:
        return list((await s.scalars(select(ManagedAlertModel))).all())


async def test_fire_stores_a_firing_alert_and_queues_it_with_endsat_four_intervals_ahead(
    service: ManagedAlerts, session_factory: Factory, clock: FakeClock
) -> None:
    out = await service.fire(DISK, {"summary": "disk 95% full"})
    assert out.changed and out.detail == "fired"
    assert out.alert is not None and out.alert.fingerprint == label_fingerprint(DISK)
    (row,) = await queue_rows(session_factory)
    assert row.alert_type == "managed_firing" and row.status == "pending"
    (alert,) = row.payload
    assert alert["labels"] == DISK and alert["annotations"] == {"summary": "disk 95% full"}
    assert parse(alert["startsAt"]) == clock.now
    assert parse(alert["endsAt"]) == clock.now + timedelta(seconds=240)
    assert row.fingerprint == label_fingerprint(DISK)


async def test_firing_again_updates_annotations_and_keeps_startsat(
    service: ManagedAlerts, session_factory: Factory, clock: FakeClock
) -> None:
    await service.fire(DISK, {"summary": "95%"})
    started = clock.now
    clock.advance(30)
    same = await service.fire(DISK, {"summary": "95%"})
    assert not same.changed and same.detail == "already firing"
    clock.advance(30)
    out = await service.fire(DISK, {"summary": "99%"})
    assert out.changed and out.detail == "updated"
    assert out.alert is not None and out.alert.starts_at == started
    rows = await queue_rows(session_factory)
    assert len(rows) == 1  # the waiting row took the new annotations in place
    (alert,) = rows[0].payload
    assert alert["annotations"] == {"summary": "99%"} and parse(alert["startsAt"]) == started
    (m,) = await managed_rows(session_factory)
    assert m.annotations == {"summary": "99%"} and m.state == "firing"


async def test_resolve_queues_the_same_labels_with_endsat_now_and_a_second_resolve_is_a_no_op(
    service: ManagedAlerts, session_factory: Factory, clock: FakeClock
) -> None:
    await service.fire(DISK, {"summary": "s"})
    clock.advance(10)
    out = await service.resolve(DISK)
    assert out.changed and out.detail == "resolved"
    firing, resolving = await queue_rows(session_factory)
    assert firing.status == "superseded"  # never delivered: the resolution replaces it
    assert resolving.alert_type == "managed_resolving"
    assert resolving.payload[0]["labels"] == DISK
    assert parse(resolving.payload[0]["endsAt"]) == clock.now
    again = await service.resolve(DISK)
    assert not again.changed and again.detail == "not firing"
    unknown = await service.resolve({"alertname": "NeverFired"})
    assert not unknown.changed and unknown.detail == "not firing" and unknown.alert is None
    assert len(await queue_rows(session_factory)) == 2


async def test_firing_after_a_resolution_is_a_new_episode_with_at_most_two_rows(
    service: ManagedAlerts, session_factory: Factory, clock: FakeClock
) -> None:
    for _ in range(3):
        await service.fire(DISK)
        async with session_factory() as s, s.begin():  # delivered
            await s.execute(Q.__table__.update().values(status="sent", sent_at=clock.now))
        clock.advance(60)
        await service.resolve(DISK)
        async with session_factory() as s, s.begin():
            await s.execute(Q.__table__.update().values(status="sent", sent_at=clock.now))
        clock.advance(60)
    out = await service.fire(DISK)
    assert out.detail == "fired" and out.alert is not None
    assert out.alert.starts_at == clock.now and out.alert.resolved_at is None
    rows = await queue_rows(session_factory)
    assert [r.alert_type for r in rows] == ["managed_firing"]
    assert len(await managed_rows(session_factory)) == 1


@pytest.mark.parametrize(
    ("labels", "annotations", "rule"),
    [
        ({"alertname": "A", "bad-name": "x"}, None, "invalid label name 'bad-name'"),
        ({"host": "db1"}, None, "labels must include alertname"),
        ({"alertname": "A", "host": ""}, None, "label value must not be empty"),
        ({"alertname": "A"}, {"1x": "y"}, "invalid annotation name '1x'"),
        ({"alertname": "A\x00"}, None, "must not contain NUL"),
    ],
)
async def test_bad_labels_are_refused_before_any_sql_leaving_the_callers_transaction_usable(
    service: ManagedAlerts,
    session_factory: Factory,
    labels: dict[str, str],
    annotations: dict[str, str] | None,
    rule: str,
) -> None:
    async with session_factory() as s, s.begin():
        with pytest.raises(InvalidAlertPayload, match=rule):
            await service.fire(labels, annotations, session=s)
        with pytest.raises(InvalidAlertPayload, match=rule.split(" '")[0]):
            if annotations is None:
                await service.resolve(labels, session=s)
            else:
                raise InvalidAlertPayload(rule)
        assert await s.scalar(text("SELECT 1")) == 1  # not an aborted transaction
    assert await queue_rows(session_factory) == []


@pytest.mark.parametrize(
    ("expires_in", "message"),
    [
        (0, "positive"),
        (-5, "positive"),
        (float("nan"), "positive"),
        (float("inf"), "positive"),
        (10**9, "at most"),
    ],
)
async def test_bad_expiry_is_a_value_error(
    service: ManagedAlerts, expires_in: float, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        await service.fire(DISK, expires_in=expires_in)


async def test_in_the_callers_transaction_a_rollback_leaves_nothing(
    service: ManagedAlerts, session_factory: Factory
) -> None:
    async with session_factory() as s:
        await s.begin()
        out = await service.fire(DISK, {"summary": "s"}, session=s)
        assert out.changed
        await service.heartbeat("backup", 3600, session=s)
        assert await s.scalar(select(func.count()).select_from(Q)) == 1  # visible inside
        await s.rollback()
    assert await queue_rows(session_factory) == []
    assert await managed_rows(session_factory) == []
    async with session_factory() as s:
        assert await s.scalar(select(func.count()).select_from(HeartbeatModel)) == 0


async def test_in_the_callers_transaction_nothing_is_committed_until_the_caller_commits(
    service: ManagedAlerts, session_factory: Factory
) -> None:
    async with session_factory() as s:
        await s.begin()
        await service.fire(DISK, session=s)
        assert s.in_transaction()
        await s.commit()
    assert len(await managed_rows(session_factory)) == 1


async def test_concurrent_fires_of_one_new_alert_make_one_managed_alert(
    service: ManagedAlerts, session_factory: Factory
) -> None:
    outs = await asyncio.gather(*(service.fire(DISK, {"summary": "s"}) for _ in range(5)))
    assert sorted(o.detail for o in outs) == ["already firing"] * 4 + ["fired"]
    assert len(await managed_rows(session_factory)) == 1
    assert len(await queue_rows(session_factory)) == 1


async def test_heartbeat_ping_records_the_deadline_and_refuses_bad_input(
    service: ManagedAlerts, clock: FakeClock
) -> None:
    hb = await service.heartbeat("backup", timedelta(hours=26), {"team": "ops"})
    assert hb.deadline == clock.now + timedelta(hours=26) and hb.state == "ok"
    (listed,) = await service.list_heartbeats()
    assert listed.name == "backup" and listed.labels == {"team": "ops"}
    with pytest.raises(ValueError, match="between"):
        await service.heartbeat("backup", 0)
    with pytest.raises(ValueError, match="invalid heartbeat name"):
        await service.heartbeat(" ", 60)
    with pytest.raises(ValueError, match="invalid heartbeat name"):  # the API's rule too
        await service.heartbeat("hb\nline2", 60)
    with pytest.raises(InvalidAlertPayload, match="alertname is set by alertq"):
        await service.heartbeat("backup", 60, {"alertname": "X"})
    with pytest.raises(InvalidAlertPayload, match="invalid label name"):
        await service.heartbeat("backup", 60, {"bad-label": "x"})


# --------------------------------------------------------------------------- module-level API


async def test_module_level_fire_and_resolve_use_the_configured_database(
    db_url: str, session_factory: Factory
) -> None:
    managed.configure(Settings(database_url=db_url), session_factory)
    try:
        assert (await managed.fire(DISK, {"summary": "s"}, expires_in=3600)).detail == "fired"
        assert (await managed.resolve(DISK)).detail == "resolved"
    finally:
        managed.configure()
    assert len(await queue_rows(session_factory)) == 2


def _count_sync(db_url: str, model: Any) -> int:
    async def go() -> int:
        engine = create_engine(Settings(database_url=db_url))
        try:
            async with create_session_factory(engine)() as s:
                return int(await s.scalar(select(func.count()).select_from(model)) or 0)
        finally:
            await engine.dispose()

    return asyncio.run(go())


def test_sync_api_works_from_plain_synchronous_code_and_many_threads(db_url: str) -> None:
    alertq.configure(Settings(database_url=db_url))
    try:
        out = alertq.fire_sync(DISK, {"summary": "from a script"})
        assert out.detail == "fired"
        errors: list[BaseException] = []

        def worker(i: int) -> None:  # e.g. a threaded WSGI server's request threads
            try:
                alertq.fire_sync({"alertname": "Job", "job": str(i)})
                alertq.heartbeat_sync(f"job{i}", 60)
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert errors == []
        assert alertq.resolve_sync(DISK).detail == "resolved"
        assert alertq.resolve_sync(DISK).detail == "not firing"
        with pytest.raises(InvalidAlertPayload, match="labels must include alertname"):
            alertq.fire_sync({"host": "db1"})
    finally:
        alertq.configure()
    assert _count_sync(db_url, ManagedAlertModel) == 5
    assert _count_sync(db_url, HeartbeatModel) == 4


async def test_managed_rows_get_the_configured_max_attempts(
    db_url: str, session_factory: Factory
) -> None:
    service = ManagedAlerts(Settings(database_url=db_url, max_attempts=3), session_factory)
    await service.fire(DISK)
    await service.resolve(DISK)
    assert [r.max_attempts for r in await queue_rows(session_factory)] == [3, 3]
