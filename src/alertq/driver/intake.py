"""The relay's SQL: a whole ``POST /api/v2/alerts`` body stored as one row per alert.

Set-based, so a 256-alert body costs one round trip on PostgreSQL (retire + insert +
NOTIFY in one statement, the rows passed as arrays through ``unnest``) and one
``executemany`` plus one UPDATE on SQLite. Never commits: the caller's
``db.transaction()`` does, and the relay answers 200 only after it has.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import bindparam, func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from alertq.driver.sql import aware
from alertq.models import AlertStatus, CostSimAlertQueueModel, UTCDateTime

__all__ = ["IntakeDriver", "IntakeRow", "IntakeSource", "LatestRow"]

Q = CostSimAlertQueueModel
PENDING = AlertStatus.PENDING.value
SUPERSEDED = AlertStatus.SUPERSEDED.value
SENT = AlertStatus.SENT.value
NOTIFY_CHANNEL = "alertq_enqueued"
SUPERSEDED_NOTE = "superseded by a newer alert with the same labels"


@dataclass(frozen=True)
class IntakeRow:
    """One relayed alert: its payload (a one-alert list) and its label fingerprint."""

    payload: list[dict[str, Any]]
    fingerprint: str


@dataclass(frozen=True)
class IntakeSource:
    """Relayed rows still in the queue from one sender (address and User-Agent)."""

    addr: str | None
    agent: str | None
    rows: int
    pending: int
    last_at: datetime


@dataclass(frozen=True)
class LatestRow:
    """The newest delivered row of one label set: what a restarted Alertmanager must relearn."""

    id: int
    payload: list[dict[str, Any]]
    created_at: datetime


# Older unleased pending rows of the batch's fingerprints are retired in a CTE that runs on
# the statement's snapshot, so it never sees the rows this statement inserts. Only rows of
# the batch's own alert type: an unauthenticated relay sender must not retire a managed
# alert's or a breaker's row by posting its labels (red-team pass 4). The payloads
# and fingerprints arrive as one text each, split here: asyncpg checks every element of a
# text[] parameter against three ABCs (0.2 ms of CPU per 256-alert body).
_INSERT_MANY_PG = text(
    """
    WITH retired AS (
        UPDATE costsim_alert_queue SET status = 'superseded', last_error = :note,
               leased_until = NULL, leased_by = NULL
        WHERE fingerprint = ANY(string_to_array(CAST(:fps AS text), ','))
          AND status = 'pending' AND alert_type = CAST(:alert_type AS text)
          AND (leased_until IS NULL OR leased_until <= :now)
        RETURNING id
    ), inserted AS (
        INSERT INTO costsim_alert_queue
            (payload, alert_type, fingerprint, max_attempts, next_attempt_at, created_at,
             status, attempts, lease_token, delivered_to, source_addr, source_agent)
        SELECT CAST(p AS jsonb), CAST(:alert_type AS text), f, CAST(:max_attempts AS integer),
               :now, :now, 'pending', 0, 0, '[]'::jsonb,
               CAST(:source_addr AS text), CAST(:source_agent AS text)
        FROM unnest(string_to_array(CAST(:payloads AS text), chr(30)),
                    string_to_array(CAST(:fps AS text), ',')) WITH ORDINALITY AS u(p, f, n)
        ORDER BY n
        RETURNING id
    )
    SELECT (SELECT count(*) FROM inserted), (SELECT count(*) FROM retired), NOTIFY_CALL
    """.replace("NOTIFY_CALL", f"pg_notify('{NOTIFY_CHANNEL}', '')")
).bindparams(bindparam("now", type_=UTCDateTime()))

# SQLite: retire older pending rows of the fingerprints once the new ones are in.
_SUPERSEDE_SQLITE = text(
    """
    UPDATE costsim_alert_queue SET status = 'superseded', last_error = :note,
           leased_until = NULL, leased_by = NULL
    WHERE status = 'pending' AND fingerprint IN :fps AND id < :first_id
      AND alert_type = :alert_type AND (leased_until IS NULL OR leased_until <= :now)
    """
).bindparams(bindparam("fps", expanding=True), bindparam("now", type_=UTCDateTime()))


@dataclass(frozen=True, slots=True)
class _Batch:
    rows: Sequence[IntakeRow]
    fps: list[str]
    alert_type: str
    now: datetime
    max_attempts: int
    source_addr: str | None
    source_agent: str | None


class _PostgresIntake:
    """One statement: retire, insert and NOTIFY (``_INSERT_MANY_PG``)."""

    async def insert_many(self, session: AsyncSession, b: _Batch) -> int:
        params = {
            # JSON escapes every control character inside a string: a raw \x1e (ASCII
            # record separator) can only be the separator.
            "payloads": b"\x1e".join([orjson.dumps(r.payload) for r in b.rows]).decode(),
            "fps": ",".join(b.fps),
            "alert_type": b.alert_type,
            "max_attempts": b.max_attempts,
            "now": b.now,
            "source_addr": b.source_addr,
            "source_agent": b.source_agent,
            "note": SUPERSEDED_NOTE,
        }
        inserted, _, _ = (await session.execute(_INSERT_MANY_PG, params)).one()
        return int(inserted)


class _SqliteIntake:
    """An ``executemany`` of the rows, then one UPDATE retiring the older ones."""

    async def insert_many(self, session: AsyncSession, b: _Batch) -> int:
        values = [
            {
                "payload": r.payload,
                "alert_type": b.alert_type,
                "fingerprint": r.fingerprint,
                "max_attempts": b.max_attempts,
                "next_attempt_at": b.now,
                "created_at": b.now,
                "status": PENDING,
                "attempts": 0,
                "lease_token": 0,
                "delivered_to": [],
                "source_addr": b.source_addr,
                "source_agent": b.source_agent,
            }
            for r in b.rows
        ]
        # Rows are inserted in order, so the batch's ids all exceed any older row's.
        first = await session.scalar(insert(Q).values(values[0]).returning(Q.id))
        if len(values) > 1:
            await session.execute(insert(Q), values[1:])
        await session.execute(
            _SUPERSEDE_SQLITE,
            {
                "fps": b.fps,
                "first_id": first,
                "now": b.now,
                "note": SUPERSEDED_NOTE,
                "alert_type": b.alert_type,
            },
        )
        return len(values)


class IntakeDriver:
    """Statements of the relay's intake. Takes the session it is given; never commits."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session
        postgres = session.get_bind().dialect.name == "postgresql"
        self._steps: _PostgresIntake | _SqliteIntake = (
            _PostgresIntake() if postgres else _SqliteIntake()
        )

    async def alerts_insert_many(
        self,
        rows: Sequence[IntakeRow],
        *,
        alert_type: str,
        now: datetime,
        max_attempts: int,
        source_addr: str | None,
        source_agent: str | None,
    ) -> int:
        """Insert one pending row per entry, due ``now``, and retire older unleased pending
        rows of the same fingerprints and ``alert_type``. Returns the number of rows
        inserted.

        Within ``rows`` a fingerprint must appear once (the caller keeps the last alert of
        a label set, as Alertmanager ends up with), and none may be empty or hold a comma
        (``ValueError`` before any statement). On PostgreSQL the workers are NOTIFYed,
        delivered when the caller commits.
        """
        if not rows:
            return 0
        fps = [r.fingerprint for r in rows]
        if len(set(fps)) != len(fps):
            raise ValueError("alerts_insert_many: a fingerprint appears twice in one batch")
        if any(not fp or "," in fp for fp in fps):
            raise ValueError("alerts_insert_many: an empty fingerprint or one with a comma")
        batch = _Batch(rows, fps, alert_type, now, max_attempts, source_addr, source_agent)
        return await self._steps.insert_many(self.session, batch)

    async def ping(self) -> None:
        """One trivial statement: whether the database answers (the relay's readiness)."""
        await self.session.execute(text("SELECT 1"))

    async def intake_sources(self, alert_type: str, limit: int) -> list[IntakeSource]:
        """Rows of ``alert_type`` by sender, most recent sender first (at most ``limit``)."""
        last = func.max(Q.created_at)
        stmt = (
            select(
                Q.source_addr,
                Q.source_agent,
                func.count(),
                func.count().filter(Q.status == PENDING),
                last,
            )
            .where(Q.alert_type == alert_type)
            .group_by(Q.source_addr, Q.source_agent)
            .order_by(last.desc())
            .limit(limit)
        )
        return [
            IntakeSource(addr, agent, int(rows), int(pending), aware(last_at))
            for addr, agent, rows, pending, last_at in (await self.session.execute(stmt)).all()
        ]

    async def alerts_latest_sent(
        self, alert_type: str, since: datetime, after_id: int, limit: int
    ) -> list[LatestRow]:
        """Sent rows of ``alert_type`` created at or after ``since`` that are the newest
        pending-or-sent row of their fingerprint, by id above ``after_id`` (keyset pages).

        A fingerprint whose newest row is still pending is left out: the worker delivers
        that newer state itself.
        """
        newest = (
            select(
                Q.id,
                Q.payload,
                Q.created_at,
                Q.status,
                func.row_number()
                .over(partition_by=Q.fingerprint, order_by=Q.id.desc())
                .label("rank"),
            )
            .where(
                Q.alert_type == alert_type,
                Q.status.in_((PENDING, SENT)),
                Q.created_at >= since,
            )
            .subquery()
        )
        stmt = (
            select(newest.c.id, newest.c.payload, newest.c.created_at)
            .where(newest.c.rank == 1, newest.c.status == SENT, newest.c.id > after_id)
            .order_by(newest.c.id)
            .limit(limit)
        )
        rows = (await self.session.execute(stmt)).all()
        return [LatestRow(int(i), list(p), aware(c)) for i, p, c in rows]
