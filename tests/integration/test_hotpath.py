"""The worker's hot path: one statement records a whole cycle, payloads go out as stored,
and the statements that bypass SQLAlchemy still run inside the session's transaction."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from alertq import metrics
from alertq.db import transaction
from alertq.delivery import AlertmanagerClient
from alertq.driver import Outcome, get_alert_driver, get_queue_driver
from alertq.engine import AlertWorker
from alertq.enqueue import enqueue_alert
from tests.integration.test_engine import enqueue_many, once, rows, worker_settings
from tests.support.clock import FakeClock
from tests.support.stub import StubAlertmanager

Factory = async_sessionmaker[AsyncSession]


class StatementLog:
    """Every statement sent to the database, through SQLAlchemy or straight to asyncpg
    (one ``executemany`` counts once, as it is one call)."""

    def __init__(self) -> None:
        self.statements: list[str] = []
        self.on = False

    def add(self, statement: str) -> None:
        if self.on:
            self.statements.append(" ".join(statement.split()))

    def updates(self) -> list[str]:
        """UPDATE statements, the claim's included (it starts with its in-flight CTE)."""
        return [
            s
            for s in self.statements
            if s.upper().startswith("UPDATE") or (s.upper().startswith("WITH") and " UPDATE " in s)
        ]


class _LoggedSqlite:
    """A sqlite3 connection whose own ``execute``/``executemany`` calls are logged: the
    statements the driver runs on aiosqlite's thread, which SQLAlchemy never sees."""

    def __init__(self, conn: Any, log: StatementLog) -> None:
        object.__setattr__(self, "_conn", conn)
        object.__setattr__(self, "_log", log)

    def execute(self, sql: str, *args: Any) -> Any:
        self._log.add(sql)
        return self._conn.execute(sql, *args)

    def executemany(self, sql: str, *args: Any) -> Any:
        self._log.add(sql)
        return self._conn.executemany(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._conn, name, value)


@pytest.fixture
def statement_log(engine: AsyncEngine) -> Iterator[StatementLog]:
    log = StatementLog()

    def on_sql(_c: Any, _cur: Any, statement: str, *_: Any) -> None:
        log.add(statement)

    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        raw = dbapi_conn.driver_connection
        if hasattr(raw, "add_query_logger"):  # asyncpg: the statements SQLAlchemy never sees
            raw.add_query_logger(lambda q: log.add(q.query))
        else:  # aiosqlite: the same, run by the driver on the connection's own thread
            raw._connection = _LoggedSqlite(raw._connection, log)

    event.listen(engine.sync_engine, "before_cursor_execute", on_sql)
    event.listen(engine.sync_engine, "connect", on_connect)
    yield log
    event.remove(engine.sync_engine, "before_cursor_execute", on_sql)
    event.remove(engine.sync_engine, "connect", on_connect)


def alert(name: str) -> list[dict[str, Any]]:
    return [{"labels": {"alertname": name}, "annotations": {"summary": name}}]


async def test_an_outage_cycle_is_recorded_in_one_update_with_per_row_jitter(
    db_url: str,
    engine: AsyncEngine,
    session_factory: Factory,
    stub: StubAlertmanager,
    statement_log: StatementLog,
) -> None:
    # 40 rows fail together; each gets its own jittered retry time, and still one
    # statement writes them all (it used to be one UPDATE per distinct retry time).
    clock = FakeClock()
    ids = await enqueue_many(session_factory, 40, now=clock.now)
    stub.respond(503, "down")
    worker = AlertWorker(
        worker_settings(db_url, stub.url), session_factory, clock=clock, rng=random.Random(3)
    )
    statement_log.on = True
    assert await once(worker) == 40
    statement_log.on = False
    got = await rows(session_factory)
    assert {got[i].status for i in ids} == {"pending"}
    assert len({got[i].next_attempt_at for i in ids}) == 40  # jitter kept per row
    assert all("503" in (got[i].last_error or "") for i in ids)
    # The claim, the record of all 40 outcomes, and the retried rows' supersede check.
    assert len(statement_log.updates()) == 3, statement_log.updates()


async def test_sent_failed_retried_and_superseded_rows_are_written_by_one_record_call(
    db_url: str, session_factory: Factory
) -> None:
    now = datetime.now(UTC)
    ids = await enqueue_many(session_factory, 5, now=now)
    async with transaction(session_factory) as s:
        claimed = await get_queue_driver(s).alerts_claim(
            now, 10, now + timedelta(seconds=30), 7, "w"
        )
    assert [c.id for c in claimed] == ids
    later = now + timedelta(seconds=42)
    outcomes = [
        Outcome(ids[0], "sent", None, ("am1",), sent_at=now),
        Outcome(ids[1], "pending", "HTTP 503", ("am1",), next_attempt_at=later),
        Outcome(ids[2], "failed", "HTTP 400: bad", ()),
        Outcome(ids[3], "superseded", "superseded by a newer alert", None),
        Outcome(ids[4], "sent", None, ("am1", "am2"), sent_at=now),
    ]
    async with transaction(session_factory) as s:
        # A lease token that is not the row's own writes nothing: the fence.
        assert await get_queue_driver(s).alerts_record(8, outcomes) == []
        assert await get_queue_driver(s).alerts_record(7, outcomes) == ids
    async with transaction(session_factory) as s:
        # Sent, failed and superseded rows are done: a second record cannot touch them
        # (the retried row is pending again, and its token is only replaced by a claim).
        assert await get_queue_driver(s).alerts_record(7, outcomes) == [ids[1]]
    got = await rows(session_factory)
    r = [got[i] for i in ids]
    assert (r[0].status, r[0].sent_at, r[0].last_error, r[0].delivered_to) == (
        "sent",
        now,
        None,
        ["am1"],
    )
    assert (r[1].status, r[1].next_attempt_at, r[1].last_error) == ("pending", later, "HTTP 503")
    assert r[1].delivered_to == ["am1"] and r[1].sent_at is None
    assert (r[2].status, r[2].last_error, r[2].delivered_to) == ("failed", "HTTP 400: bad", [])
    assert (r[3].status, r[3].delivered_to, r[3].sent_at) == ("superseded", [], None)
    assert r[3].next_attempt_at == now + timedelta(seconds=30)  # left as the claim set it
    assert r[4].delivered_to == ["am1", "am2"]
    assert all(x.leased_until is None and x.leased_by is None for x in r)


@pytest.mark.parametrize("same_delivered_to", [True, False])
async def test_a_record_whose_rows_share_one_outcome_is_fenced_and_complete(
    db_url: str, session_factory: Factory, same_delivered_to: bool
) -> None:
    # A delivered batch (every row sent alike) takes PostgreSQL's one-outcome statement;
    # rows whose targets differ do not, and each keeps its own.
    now = datetime.now(UTC)
    ids = await enqueue_many(session_factory, 4, now=now)
    async with transaction(session_factory) as s:
        await get_queue_driver(s).alerts_claim(now, 3, now + timedelta(seconds=30), 7, "w")
    claimed, unclaimed = ids[:3], ids[3]
    targets = [["am1", "am2"] if same_delivered_to or i != claimed[1] else ["am2"] for i in ids]
    outcomes = [Outcome(i, "sent", None, list(targets[n]), sent_at=now) for n, i in enumerate(ids)]
    async with transaction(session_factory) as s:
        assert await get_queue_driver(s).alerts_record(8, outcomes) == []
        assert await get_queue_driver(s).alerts_record(7, outcomes) == claimed
        assert await get_queue_driver(s).alerts_record(7, outcomes) == []
    got = await rows(session_factory)
    for n, i in enumerate(claimed):
        assert (got[i].status, got[i].sent_at, got[i].last_error) == ("sent", now, None)
        assert got[i].delivered_to == targets[n]
        assert got[i].leased_until is None and got[i].leased_by is None
    assert (got[unclaimed].status, got[unclaimed].sent_at) == ("pending", None)


def enqueue_to_sent() -> tuple[float, float]:
    """The count and sum of the enqueue-to-sent histogram so far (the registry is global)."""
    got = {s.name: s.value for m in metrics.ENQUEUE_TO_SENT.collect() for s in m.samples}
    return got["alertq_enqueue_to_sent_seconds_count"], got["alertq_enqueue_to_sent_seconds_sum"]


async def test_every_sent_row_is_observed_once_in_the_enqueue_to_sent_histogram(
    db_url: str, session_factory: Factory, stub: StubAlertmanager
) -> None:
    clock = FakeClock(datetime.now(UTC))
    await enqueue_many(session_factory, 5, now=clock() - timedelta(seconds=2))
    worker = AlertWorker(worker_settings(db_url, stub.url), session_factory, clock=clock)
    count, total = enqueue_to_sent()
    assert await once(worker) == 5
    after_count, after_total = enqueue_to_sent()
    assert after_count - count == 5
    assert after_total - total == pytest.approx(5 * 2.0, abs=0.5)


async def test_stored_payloads_are_posted_as_stored_without_re_encoding(
    db_url: str, session_factory: Factory, stub: StubAlertmanager
) -> None:
    # Two rows, one with two alerts, odd characters and key order: the POST body is the
    # two stored JSON arrays joined into one, and decodes to exactly the three alerts.
    first = [
        {"labels": {"alertname": "Z", "a": 'ünïcode "quoted" \\ back'}, "annotations": {}},
        {"labels": {"alertname": "Y", "emoji": "🔥"}},
    ]
    second = [{"labels": {"b": "2", "alertname": "X"}, "generatorURL": "http://x/?q=1&r=2"}]
    async with transaction(session_factory) as s:
        await enqueue_alert(s, first, "disable")
        await enqueue_alert(s, second, "disable")
    async with session_factory() as s:
        cast = "payload::text" if s.get_bind().dialect.name == "postgresql" else "payload"
        stored = (
            await s.execute(text(f"SELECT {cast} FROM costsim_alert_queue ORDER BY id"))
        ).scalars()
        expected = "[" + ",".join(t.strip()[1:-1] for t in stored) + "]"
    worker = AlertWorker(worker_settings(db_url, stub.url), session_factory)
    assert await once(worker) == 2
    [request] = stub.received_requests
    assert request.raw == expected.encode()  # byte for byte what the database holds
    [body] = stub.received
    assert body is not None
    assert [a["labels"] for a in body] == [
        first[0]["labels"],
        first[1]["labels"],
        second[0]["labels"],
    ]
    assert body[2]["generatorURL"] == "http://x/?q=1&r=2"
    assert {r.status for r in (await rows(session_factory)).values()} == {"sent"}


async def test_claimed_rows_carry_the_stored_payload_text_and_alert_count(
    db_url: str, session_factory: Factory
) -> None:
    now = datetime.now(UTC)
    async with transaction(session_factory) as s:
        await enqueue_alert(s, alert("A") + alert("B"), "disable", now=now)
    async with transaction(session_factory) as s:
        [row] = await get_queue_driver(s).alerts_claim(now, 5, now + timedelta(seconds=9), 1, "w")
    assert row.alert_count == 2
    assert json.loads(row.payload_json) == row.payload
    assert [a["labels"]["alertname"] for a in row.payload] == ["A", "B"]
    assert row.delivered_to == []


async def test_statements_run_on_the_raw_connection_roll_back_with_the_session(
    db_url: str, session_factory: Factory
) -> None:
    # The claim and the enqueue run on asyncpg or sqlite3 directly, under SQLAlchemy's
    # session: they must be part of the session's transaction, or a rollback would leave
    # rows leased or enqueued.
    now = datetime.now(UTC)
    await enqueue_many(session_factory, 3, now=now)
    async with session_factory() as s:
        await s.begin()
        claimed = await get_queue_driver(s).alerts_claim(now, 5, now + timedelta(hours=1), 9, "w")
        assert len(claimed) == 3
        await enqueue_alert(s, alert("RolledBack"), "disable", now=now)
        await s.rollback()
    async with session_factory() as s:
        assert await s.scalar(text("SELECT count(*) FROM costsim_alert_queue")) == 3
    async with session_factory() as s:
        leased = await s.scalar(
            text("SELECT count(*) FROM costsim_alert_queue WHERE lease_token = 9")
        )
    assert leased == 0
    async with transaction(session_factory) as s:
        assert len(await get_alert_driver(s).alerts_claim(now, 5, now, 10, "w")) == 3


async def test_post_raw_sends_the_body_it_is_given(stub: StubAlertmanager) -> None:
    body = json.dumps([{"labels": {"alertname": "Raw"}}]).encode()
    async with AlertmanagerClient([stub.url]) as client:
        [result] = await client.post_raw(body)
    assert result.ok
    assert stub.received_requests[0].raw == body


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_a_failing_sqlite_statement_run_by_the_driver_raises_sqlalchemys_class(
    db_url: str, session_factory: Factory
) -> None:
    # The driver runs SQLite's hot statements with sqlite3 itself: a failure must still
    # reach callers as SQLAlchemy's exception (what is_database_error and the API map),
    # and never quote the payload.
    async with transaction(session_factory) as s:
        await s.execute(
            text(
                "CREATE TRIGGER refuse BEFORE INSERT ON costsim_alert_queue "
                "BEGIN SELECT RAISE(ABORT, 'refused by trigger'); END"
            )
        )
    with pytest.raises(sa_exc.IntegrityError, match="refused by trigger") as caught:
        async with transaction(session_factory) as s:
            await enqueue_alert(s, alert("SecretPayloadText"), "disable")
    assert "SecretPayloadText" not in str(caught.value)
    async with session_factory() as s:
        assert await s.scalar(text("SELECT count(*) FROM costsim_alert_queue")) == 0


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_a_closed_sqlite_connection_under_the_driver_is_an_operational_error(
    db_url: str, session_factory: Factory
) -> None:
    # What SQLAlchemy's adapter reports for a closed aiosqlite connection, and what the
    # worker's outage handling (db.is_database_error) recognises.
    async with session_factory() as s:
        raw = await (await s.connection()).get_raw_connection()
        await raw.driver_connection.close()
        with pytest.raises(sa_exc.OperationalError):
            await enqueue_alert(s, alert("AfterClose"), "disable")
        await s.invalidate()
