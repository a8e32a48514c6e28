"""The hot statements' plans on a PostgreSQL queue that is mostly history.

50,000 rows, mostly sent, loaded with one INSERT … SELECT generate_series and ANALYZEd.
The statements checked are the exact ones the driver sends, captured from SQLAlchemy (or,
for the hot path, from the asyncpg connection under it) while the driver method runs, then
EXPLAINed with the same parameters in the same transaction: the claim walks the partial
index of due rows, and the supersede probe of every enqueue the partial index of pending
fingerprints. Neither scans the table, and the claim keeps its custom plan (a generic plan
could not use a partial index: the status is a parameter).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from alertq.config import Settings
from alertq.db import create_engine, create_session_factory
from alertq.driver import AlertDriver, get_alert_driver
from alertq.driver.intake import IntakeDriver, IntakeRow
from alertq.driver.sql import PG_CLAIM
from alertq.engine import AlertWorker
from tests.support.stub import StubAlertmanager

pytestmark = pytest.mark.postgres

ROWS = 50_000
BACKLOG = 4_500  # pending rows behind an outage
IDLE = 500  # pending rows of a queue that keeps up
FAILED = 500
TABLE = "costsim_alert_queue"

# Test SQL: the fastest way to a realistic queue. Every row carries one alert and a unique
# 16-hex-digit fingerprint, like an enqueued single alert; the first rows are the history.
FILL = text(
    """
    INSERT INTO costsim_alert_queue
        (payload, alert_type, status, attempts, max_attempts, next_attempt_at, created_at,
         sent_at, last_error, fingerprint, lease_token, delivered_to)
    SELECT jsonb_build_array(jsonb_build_object(
               'labels', jsonb_build_object('alertname', 'PlanTest', 'seq', g::text))),
           'disable',
           CASE WHEN g > p.history + p.failed THEN 'pending'
                WHEN g > p.history THEN 'failed' ELSE 'sent' END,
           CASE WHEN g > p.history + p.failed THEN 0 ELSE 1 END,
           10,
           now() - make_interval(secs => p.total - g),
           now() - make_interval(secs => p.total - g),
           CASE WHEN g <= p.history THEN now() - make_interval(secs => p.total - g) END,
           CASE WHEN g > p.history AND g <= p.history + p.failed THEN 'HTTP 400: bad' END,
           substr(md5(g::text), 1, 16),
           0,
           '[]'::jsonb
    FROM (SELECT CAST(:total AS integer) AS total, CAST(:history AS integer) AS history,
                 CAST(:failed AS integer) AS failed) AS p,
         generate_series(1, p.total) AS g
    """
)


# Only the PostgreSQL side of the two-backend fixture: the plans are PostgreSQL's.
postgres_only = pytest.mark.parametrize("db_url", ["postgres"], indirect=True)


async def fill(engine: AsyncEngine, pending: int) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            FILL, {"total": ROWS, "history": ROWS - pending - FAILED, "failed": FAILED}
        )
    async with engine.connect() as conn:
        await conn.execute(text(f"ANALYZE {TABLE}"))
        await conn.commit()


async def explain_driver_statement(
    engine: AsyncEngine,
    session: AsyncSession,
    call: Callable[[AlertDriver], Awaitable[Any]],
    prefix: str,
) -> tuple[str, dict[str, Any]]:
    """Run ``call`` and EXPLAIN the statement it sent that starts with ``prefix``, with the
    same parameters, in the same (later rolled back) transaction."""
    captured: list[tuple[str, Any]] = []

    def capture(_c: Any, _cur: Any, statement: str, params: Any, _ctx: Any, _many: bool) -> None:
        if statement.lstrip().upper().startswith(prefix):
            captured.append((statement, params))

    # The hot statements bypass SQLAlchemy's statement handling and run on the session's
    # asyncpg connection itself: capture them there too.
    conn = await session.connection()
    raw = (await conn.get_raw_connection()).driver_connection

    def capture_raw(query: Any) -> None:
        if query.query.lstrip().upper().startswith(prefix):
            captured.append((query.query, query.args))

    event.listen(engine.sync_engine, "before_cursor_execute", capture)
    raw.add_query_logger(capture_raw)
    try:
        await call(get_alert_driver(session))
        await asyncio.sleep(0)  # asyncpg hands query logs to its callbacks with call_soon
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", capture)
        raw.remove_query_logger(capture_raw)
    assert len(captured) == 1, [s for s, _ in captured]
    statement, params = captured[0]
    plan = await raw.fetchval("EXPLAIN (FORMAT JSON) " + statement, *params)
    document = json.loads(plan) if isinstance(plan, str) else plan
    return statement, document[0]["Plan"]


def nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every node of a JSON plan, subplans and init plans included."""
    yield plan
    for child in plan.get("Plans", []):
        yield from nodes(child)


def indexes_used(plan: dict[str, Any]) -> set[str]:
    return {n["Index Name"] for n in nodes(plan) if "Index Name" in n}


def table_scans(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """Sequential scans of the queue table."""
    return [
        n for n in nodes(plan) if n["Node Type"] == "Seq Scan" and n.get("Relation Name") == TABLE
    ]


async def explain_claim(
    engine: AsyncEngine, factory: async_sessionmaker[AsyncSession]
) -> tuple[str, dict[str, Any]]:
    now = datetime.now(UTC)
    claimed: list[Any] = []

    async def claim(driver: AlertDriver) -> None:
        lease = now + timedelta(seconds=30)
        claimed.extend(await driver.alerts_claim(now, 256, lease, 99, "plans"))

    async with factory() as session:
        await session.begin()
        statement, plan = await explain_driver_statement(engine, session, claim, "WITH INFLIGHT")
        await session.rollback()
    assert len(claimed) == 256  # it did claim, from the pending tail
    return statement, plan


@postgres_only
async def test_claim_on_a_mostly_sent_queue_walks_the_partial_due_index(
    engine: AsyncEngine, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    await fill(engine, BACKLOG)
    statement, plan = await explain_claim(engine, session_factory)
    used = indexes_used(plan)
    assert "ix_costsim_alert_queue_due" in used, (used, statement)
    assert table_scans(plan) == [], statement
    # Nothing else reads the 45,000 rows of history: the set of fingerprints in flight
    # comes from the index of leased rows, the update uses the primary key.
    assert used <= {
        "ix_costsim_alert_queue_due",
        "ix_costsim_alert_queue_leased",
        "idx_costsim_alert_queue_next",
        "ix_costsim_alert_queue_pending_fingerprint",
        "costsim_alert_queue_pkey",
    }, used


async def two_batches_in_flight(session_factory: async_sessionmaker[AsyncSession]) -> None:
    """Two loops' batches claimed and not yet recorded, as in a busy drain."""
    for token in (1, 2):
        async with session_factory() as session:
            await session.begin()
            now = datetime.now(UTC)
            lease = now + timedelta(seconds=30)
            rows = await get_alert_driver(session).alerts_claim(now, 256, lease, token, "busy")
            assert len(rows) == 256
            await session.commit()


def cte(plan: dict[str, Any], name: str) -> dict[str, Any]:
    [found] = [n for n in nodes(plan) if n.get("Subplan Name") == f"CTE {name}"]
    return found


@postgres_only
async def test_the_in_flight_lookup_reads_the_leased_rows_not_the_retries_waiting(
    engine: AsyncEngine, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    # After an outage: most pending rows wait out their backoff (pending, not due). Found in
    # the due index's future range, they were read by every claim: 3.8 times the claim's CPU
    # with 100,000 waiting (bench/claim_backlog.py).
    history = 1_000
    await fill(engine, ROWS - FAILED - history)  # ids after history + FAILED are pending
    async with engine.begin() as conn:
        waiting = await conn.execute(
            text(
                f"UPDATE {TABLE} SET attempts = 1, next_attempt_at = now() + interval '10 s'"
                " + (id % 290) * interval '1 s' WHERE status = 'pending' AND id > :due"
            ),
            {"due": history + FAILED + 4_000},
        )
        assert waiting.rowcount == ROWS - FAILED - history - 4_000
    await two_batches_in_flight(session_factory)
    async with engine.connect() as conn:
        await conn.execute(text(f"ANALYZE {TABLE}"))
        await conn.commit()
    statement, plan = await explain_claim(engine, session_factory)
    inflight = cte(plan, "inflight")
    assert indexes_used(inflight) == {"ix_costsim_alert_queue_leased"}, (inflight, statement)
    assert table_scans(inflight) == [], statement


@postgres_only
async def test_claim_on_a_nearly_empty_queue_reads_only_pending_rows(
    engine: AsyncEngine, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    # With only 1% of the rows pending, PostgreSQL may prefer the legacy status index and
    # sort the few pending rows itself; either way no row of history is read.
    await fill(engine, IDLE)
    statement, plan = await explain_claim(engine, session_factory)
    assert table_scans(plan) == [], statement
    for node in nodes(plan):
        if node.get("Index Name") == "idx_costsim_alert_queue_status":
            assert "status = 'pending'" in node.get("Index Cond", ""), node
    assert indexes_used(plan) & {"ix_costsim_alert_queue_due", "idx_costsim_alert_queue_status"}


@postgres_only
async def test_claim_keeps_its_custom_plan_when_executed_again_and_again(
    db_url: str, engine: AsyncEngine
) -> None:
    await fill(engine, BACKLOG)
    # One pooled connection, so every claim reuses the same prepared statement, as a worker
    # does; PostgreSQL considers a generic plan from the sixth execution on.
    single = create_engine(Settings(database_url=db_url), pool_size=1, max_overflow=0)
    factory = create_session_factory(single)
    try:
        for token in range(1, 11):
            async with factory() as session:
                await session.begin()
                now = datetime.now(UTC)
                lease = now + timedelta(seconds=30)
                rows = await get_alert_driver(session).alerts_claim(now, 256, lease, token, "p")
                assert len(rows) == 256
                await session.rollback()
            async with factory() as session:
                generic, custom = (
                    await session.execute(
                        text(
                            "SELECT coalesce(sum(generic_plans), 0), coalesce(sum(custom_plans), 0)"
                            " FROM pg_prepared_statements"
                            " WHERE statement = :claim"
                        ),
                        {"claim": PG_CLAIM},
                    )
                ).one()
    finally:
        await single.dispose()
    assert (generic, custom) == (0, 10)


@postgres_only
async def test_supersede_probe_of_an_enqueue_uses_the_pending_fingerprint_index(
    engine: AsyncEngine, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    await fill(engine, BACKLOG)
    async with session_factory() as session:
        pending_fp, sent_fp = (
            await session.execute(
                text(
                    "SELECT (SELECT fingerprint FROM costsim_alert_queue"
                    "        WHERE status = 'pending' ORDER BY id DESC LIMIT 1),"
                    "       (SELECT fingerprint FROM costsim_alert_queue"
                    "        WHERE status = 'sent' ORDER BY id LIMIT 1)"
                )
            )
        ).one()
        await session.rollback()

    async with session_factory() as session:
        await session.begin()

        async def supersede(driver: AlertDriver) -> None:
            await driver.alerts_supersede_older([pending_fp, sent_fp], datetime.now(UTC))

        statement, plan = await explain_driver_statement(engine, session, supersede, "UPDATE")
        await session.rollback()
    used = indexes_used(plan)
    assert "ix_costsim_alert_queue_pending_fingerprint" in used, (used, statement)
    assert table_scans(plan) == [], statement
    assert used <= {"ix_costsim_alert_queue_pending_fingerprint", "costsim_alert_queue_pkey"}, used


def subplans(plan: dict[str, Any]) -> list[dict[str, Any]]:
    return [n for n in nodes(plan) if n.get("Parent Relationship") == "SubPlan"]


@postgres_only
async def test_claim_after_statistics_of_an_empty_queue_reads_the_in_flight_set_once(
    engine: AsyncEngine, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    # A fresh (or just drained) queue, ANALYZEd while empty, then a burst of pending rows
    # before autovacuum has looked again. A correlated in-flight probe planned on those
    # statistics walked every pending row for each candidate: minutes for one claim.
    async with engine.connect() as conn:
        await conn.execute(text(f"ANALYZE {TABLE}"))
        await conn.commit()
    async with engine.begin() as conn:
        await conn.execute(FILL, {"total": 20_000, "history": 0, "failed": 0})
    statement, plan = await explain_claim(engine, session_factory)
    # The fingerprints in flight are read once per claim (a CTE), and each candidate is
    # checked against that small set, never by a scan of the table per candidate.
    assert subplans(plan) == [], statement
    assert any(n["Node Type"] == "CTE Scan" for n in nodes(plan)), statement


@postgres_only
async def test_a_claim_leases_at_most_its_batch_after_plans_made_on_an_empty_queue(
    db_url: str, engine: AsyncEngine
) -> None:
    # One connection, as a worker has: five claims on the empty queue make PostgreSQL
    # switch the prepared claim to a generic plan; then a burst arrives before any ANALYZE.
    async with engine.connect() as conn:
        await conn.execute(text(f"ANALYZE {TABLE}"))
        await conn.commit()
    single = create_engine(Settings(database_url=db_url), pool_size=1, max_overflow=0)
    factory = create_session_factory(single)
    try:
        for token in range(1, 7):
            async with factory() as session:
                await session.begin()
                now = datetime.now(UTC)
                lease = now + timedelta(seconds=30)
                assert (
                    await get_alert_driver(session).alerts_claim(now, 256, lease, token, "p") == []
                )
                await session.rollback()
        async with engine.begin() as conn:
            await conn.execute(FILL, {"total": 5_000, "history": 0, "failed": 0})
        async with factory() as session:
            await session.begin()
            now = datetime.now(UTC)
            lease = now + timedelta(seconds=30)
            rows = await get_alert_driver(session).alerts_claim(now, 256, lease, 7, "p")
            await session.rollback()
    finally:
        await single.dispose()
    assert len(rows) == 256


@postgres_only
async def test_claim_looks_each_candidate_up_in_the_in_flight_set_instead_of_scanning_it(
    engine: AsyncEngine, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    # Two loops' batches in flight, as in a busy drain. Checked with an anti join, the
    # planner (under the LIMIT) compared each of 256 candidates with each of 512 rows in
    # flight: more than half of PostgreSQL's CPU per drained row.
    await fill(engine, BACKLOG)
    await two_batches_in_flight(session_factory)
    statement, plan = await explain_claim(engine, session_factory)
    joins = [n for n in nodes(plan) if n.get("Join Type") == "Anti" or "Join Filter" in n]
    assert joins == [], statement
    # The set is built once (an InitPlan over the CTE), then each candidate is one lookup.
    init = [n for n in nodes(plan) if n.get("Parent Relationship") == "InitPlan"]
    assert any(m.get("CTE Name") == "inflight" for n in init for m in nodes(n)), statement
    assert subplans(plan) == [], statement


@postgres_only
async def test_retry_failed_reads_only_failed_rows_through_their_partial_index(
    engine: AsyncEngine, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    # The full status index is gone (migration 0005): failed rows keep a small one.
    await fill(engine, BACKLOG)
    async with session_factory() as session:
        await session.begin()

        async def retry(driver: AlertDriver) -> None:
            await driver.alerts_retry_failed(3, datetime.now(UTC))

        statement, plan = await explain_driver_statement(engine, session, retry, "UPDATE")
        await session.rollback()
    assert "ix_costsim_alert_queue_failed" in indexes_used(plan), statement
    assert table_scans(plan) == [], statement


@postgres_only
async def test_fingerprint_probes_never_walk_the_due_index_after_a_burst_behind_stale_statistics(
    engine: AsyncEngine, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    # A queue ANALYZEd while it kept up (history, hardly a pending row), then an outage: a
    # burst of pending rows before autovacuum looks again. Both partial indexes cover
    # pending rows, and on those statistics the planner found walking every pending row of
    # the due index as cheap as probing the fingerprint index: each 256-alert relay body
    # took 2 ms on an empty backlog and 45 ms at 10,000 pending rows.
    async with engine.begin() as conn:
        await conn.execute(FILL, {"total": 20_000, "history": 20_000, "failed": 0})
    async with engine.connect() as conn:
        await conn.execute(text(f"ANALYZE {TABLE}"))
        await conn.commit()
    async with engine.begin() as conn:
        await conn.execute(FILL, {"total": 5_000, "history": 0, "failed": 0})
        fps = (
            await conn.execute(
                text(
                    "SELECT fingerprint FROM costsim_alert_queue WHERE status = 'pending' "
                    "ORDER BY id DESC LIMIT 256"
                )
            )
        ).scalars()
        fingerprints = list(fps)

    async def relay_body(driver: AlertDriver) -> None:
        rows = [IntakeRow([{"labels": {"fp": fp}}], fp) for fp in fingerprints]
        await IntakeDriver(driver.session).alerts_insert_many(
            rows,
            alert_type="relay",
            now=datetime.now(UTC),
            max_attempts=10,
            source_addr=None,
            source_agent=None,
        )

    async def supersede(driver: AlertDriver) -> None:
        await driver.alerts_supersede_older(fingerprints[:2], datetime.now(UTC))

    async def enqueue(driver: AlertDriver) -> None:
        await driver.alerts_enqueue(
            [{"labels": {"fp": fingerprints[0]}}],
            "disable",
            None,
            None,
            fingerprint=fingerprints[0],
            now=datetime.now(UTC),
            max_attempts=10,
        )

    for call, prefix in ((relay_body, "WITH"), (supersede, "UPDATE"), (enqueue, "WITH")):
        async with session_factory() as session:
            await session.begin()
            statement, plan = await explain_driver_statement(engine, session, call, prefix)
            await session.rollback()
        used = indexes_used(plan)
        assert "ix_costsim_alert_queue_due" not in used, (used, statement)
        assert "ix_costsim_alert_queue_pending_fingerprint" in used, (used, statement)
        assert table_scans(plan) == [], statement


@postgres_only
async def test_claim_after_a_drain_by_the_worker_reads_no_row_of_what_it_sent(
    db_url: str,
    engine: AsyncEngine,
    session_factory: async_sessionmaker[AsyncSession],
    stub: StubAlertmanager,
) -> None:
    # History made by the worker itself, as a relay burst leaves it: every row sent within
    # one lease. Left at its lease end (in the future), next_attempt_at made the in-flight
    # set's scan look unselective and PostgreSQL read the whole table on every claim (its
    # dead row versions too): 5 ms per 256-row claim on the first burst, 78 ms on the third.
    async with engine.begin() as conn:
        await conn.execute(FILL, {"total": 10_000, "history": 0, "failed": 0})
    settings = Settings(
        database_url=db_url, alertmanager_urls=[stub.url], lease_seconds=300, poll_interval=0.05
    )
    worker = AlertWorker(settings, session_factory)
    await asyncio.wait_for(worker.run(asyncio.Event(), drain=True), 120)
    async with engine.begin() as conn:
        await conn.execute(FILL, {"total": BACKLOG, "history": 0, "failed": 0})
    async with engine.connect() as conn:
        await conn.execute(text(f"ANALYZE {TABLE}"))
        await conn.commit()
    statement, plan = await explain_claim(engine, session_factory)
    assert table_scans(plan) == [], (statement, json.dumps(plan, indent=1)[:6000])
