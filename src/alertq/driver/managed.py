"""Data access for managed alerts and heartbeats: every SQL statement on their tables.

Like the rest of the driver: the session is the caller's, nothing is committed here, no
decision is made here. Rows are locked ``FOR UPDATE`` (``SKIP LOCKED`` where a pass over
many rows must not wait) on PostgreSQL; on SQLite the ``BEGIN IMMEDIATE`` write
transaction already excludes other writers, and SQLAlchemy drops the clause.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    CursorResult,
    Table,
    and_,
    bindparam,
    case,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from alertq.driver.sql import aware
from alertq.models import (
    AlertStatus,
    CostSimAlertQueueModel,
    CostSimCBIncidentModel,
    HeartbeatModel,
    HeartbeatState,
    ManagedAlertModel,
    ManagedState,
    UTCDateTime,
)

__all__ = ["ManagedDriver", "ManagedDue", "get_managed_driver"]

M = ManagedAlertModel
H = HeartbeatModel
Q = CostSimAlertQueueModel
PENDING = AlertStatus.PENDING.value
SENT = AlertStatus.SENT.value
FAILED = AlertStatus.FAILED.value


@dataclass(frozen=True, slots=True)
class ManagedDue:
    """A managed alert keep-alive must look at, locked, with its current queue row's state."""

    alert: ManagedAlertModel
    row_status: str | None
    """None when the current row no longer exists (purged) or was never written."""
    row_sent_at: datetime | None
    row_last_attempt_at: datetime | None


class ManagedDriver:
    """Statements on ``alertq_managed_alerts`` and ``alertq_heartbeats`` (and the queue rows
    they own)."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session
        name = session.get_bind().dialect.name
        self._steps = _PostgresSteps() if name == "postgresql" else _SqliteSteps()

    def _insert(self, model: Any) -> Any:
        return self._steps.insert(model)

    # -- managed alerts

    async def managed_lock(self, fingerprint: str) -> ManagedAlertModel | None:
        """The managed alert, locked until the transaction ends, freshly read."""
        stmt = (
            select(M)
            .where(M.fingerprint == fingerprint)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
        return (await self.session.scalars(stmt)).one_or_none()

    async def managed_insert(self, **values: Any) -> bool:
        """Insert a managed alert unless one has its fingerprint (race-free); True if new."""
        stmt = (
            self._insert(M)
            .values(**values)
            .on_conflict_do_nothing(index_elements=["fingerprint"])
            .returning(M.id)
        )
        return (await self.session.execute(stmt)).first() is not None

    async def managed_update(self, managed_id: int, **values: Any) -> None:
        """Set columns of one managed alert."""
        stmt = (
            update(M)
            .where(M.id == managed_id)
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        await self.session.execute(stmt)

    async def managed_get(self, fingerprint: str) -> ManagedAlertModel | None:
        stmt = (
            select(M).where(M.fingerprint == fingerprint).execution_options(populate_existing=True)
        )
        return (await self.session.scalars(stmt)).one_or_none()

    async def managed_list(
        self, *, state: str | None = None, limit: int = 100, after: str | None = None
    ) -> list[ManagedAlertModel]:
        """Managed alerts, firing first, newest first (``starts_at``, then ``id``).

        ``after`` is a keyset cursor: the fingerprint of the last alert of the previous
        page. The page continues after that alert's place in the order; an unknown
        fingerprint gives no rows (the caller checks it exists first).
        """
        rank = case((M.state == ManagedState.FIRING.value, 0), else_=1)
        stmt = (
            select(M)
            .order_by(rank, M.starts_at.desc(), M.id.desc())
            .limit(limit)
            .execution_options(populate_existing=True)
        )
        if state is not None:
            stmt = stmt.where(M.state == state)
        if after is not None:  # joined to the cursor's row: one lookup, none if unknown
            c = aliased(M)
            c_rank = case((c.state == ManagedState.FIRING.value, 0), else_=1)
            older = or_(M.starts_at < c.starts_at, and_(M.starts_at == c.starts_at, M.id < c.id))
            stmt = stmt.join(c, c.fingerprint == after).where(
                or_(rank > c_rank, and_(rank == c_rank, older))
            )
        return list((await self.session.scalars(stmt)).all())

    async def managed_counts(self) -> dict[str, int]:
        stmt = select(M.state, func.count()).group_by(M.state)
        return {str(s): int(n) for s, n in (await self.session.execute(stmt)).all()}

    async def managed_lock_due(self, now: datetime, limit: int) -> list[ManagedDue]:
        """Up to ``limit`` managed alerts whose ``keepalive_at`` has come, oldest first,
        locked ``FOR UPDATE SKIP LOCKED`` (one being fired or resolved right now is
        skipped), each with its current queue row (firing row while firing, resolving row
        once resolved). Served by the partial index on ``keepalive_at``: the cost is the
        due alerts, not the history."""
        current = case(
            (M.state == ManagedState.FIRING.value, M.firing_row_id), else_=M.resolving_row_id
        )
        stmt = (
            select(M, Q.status, Q.sent_at, Q.last_attempt_at)
            .outerjoin(Q, Q.id == current)
            .where(M.keepalive_at.is_not(None), M.keepalive_at <= now)
            .order_by(M.keepalive_at, M.id)
            .limit(limit)
            .with_for_update(of=M, skip_locked=True)
            .execution_options(populate_existing=True)
        )
        return [
            ManagedDue(r[0], r[1], aware(r[2]), aware(r[3]))
            for r in (await self.session.execute(stmt)).all()
        ]

    async def managed_set_keepalive_many(self, values: Sequence[dict[str, Any]]) -> None:
        """Set ``keepalive_at`` and ``last_sent_at`` of many managed alerts in one
        executemany; each dict has ``m_id``, ``next_at`` and ``sent_at``."""
        if not values:
            return
        table = ManagedAlertModel.__table__
        assert isinstance(table, Table)
        stmt = (
            table.update()
            .where(table.c.id == bindparam("m_id"))
            .values(
                keepalive_at=bindparam("next_at", type_=UTCDateTime()),
                last_sent_at=func.coalesce(
                    bindparam("sent_at", type_=UTCDateTime()), table.c.last_sent_at
                ),
            )
        )
        conn = await self.session.connection()
        await conn.execute(stmt, list(values))

    async def managed_incidents_lock(self, incident_ids: Sequence[str]) -> set[str]:
        """Lock the given incidents ``FOR UPDATE SKIP LOCKED``; return those locked here.

        A breaker incident being resolved right now holds its row: keep-alive leaves its
        alert alone until the resolution is done.
        """
        if not incident_ids:
            return set()
        inc = CostSimCBIncidentModel
        stmt = (
            select(inc.id).where(inc.id.in_(list(incident_ids))).with_for_update(skip_locked=True)
        )
        return set((await self.session.scalars(stmt)).all())

    # -- heartbeats

    async def heartbeats_lock(self, name: str) -> HeartbeatModel | None:
        stmt = (
            select(H)
            .where(H.name == name)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
        return (await self.session.scalars(stmt)).one_or_none()

    async def heartbeats_get(self, name: str) -> HeartbeatModel | None:
        stmt = select(H).where(H.name == name).execution_options(populate_existing=True)
        return (await self.session.scalars(stmt)).one_or_none()

    async def heartbeats_ping(
        self, name: str, window_seconds: float, labels: dict[str, str], now: datetime
    ) -> None:
        """Record a ping: the heartbeat exists (created on first ping), is ``ok`` and due
        again ``window_seconds`` from ``now``. One statement (an upsert)."""
        values = {
            "name": name,
            "window_seconds": window_seconds,
            "labels": labels,
            "last_ping_at": now,
            "deadline": now + _seconds(window_seconds),
            "state": HeartbeatState.OK.value,
            "missing_fingerprint": None,
            "created_at": now,
        }
        stmt = self._insert(H).values(**values)
        stmt = stmt.on_conflict_do_update(
            index_elements=["name"],
            set_={k: stmt.excluded[k] for k in values if k not in ("name", "created_at")},
        )
        await self.session.execute(stmt)

    async def heartbeats_lock_overdue(self, now: datetime, limit: int) -> list[HeartbeatModel]:
        """``ok`` heartbeats whose deadline has passed, locked ``FOR UPDATE SKIP LOCKED``:
        among many workers, each overdue heartbeat is taken by exactly one pass."""
        stmt = (
            select(H)
            .where(H.state == HeartbeatState.OK.value, H.deadline <= now)
            .order_by(H.deadline, H.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
            .execution_options(populate_existing=True)
        )
        return list((await self.session.scalars(stmt)).all())

    async def heartbeats_mark_missing(self, heartbeat_id: int, fingerprint: str) -> bool:
        """Flip an ``ok`` heartbeat to ``missing`` (only once: the guard is its state)."""
        stmt = (
            update(H)
            .where(H.id == heartbeat_id, H.state == HeartbeatState.OK.value)
            .values(state=HeartbeatState.MISSING.value, missing_fingerprint=fingerprint)
            .execution_options(synchronize_session=False)
        )
        return _rowcount(await self.session.execute(stmt)) > 0

    async def heartbeats_list(
        self, limit: int = 100, after: str | None = None
    ) -> list[HeartbeatModel]:
        """Heartbeats, missing first, then by name.

        ``after`` is a keyset cursor: the name of the last heartbeat of the previous page;
        an unknown name gives no rows (the caller checks it exists first).
        """
        rank = case((H.state == HeartbeatState.MISSING.value, 0), else_=1)
        stmt = (
            select(H).order_by(rank, H.name).limit(limit).execution_options(populate_existing=True)
        )
        if after is not None:  # joined to the cursor's row: none if unknown
            c = aliased(H)
            c_rank = case((c.state == HeartbeatState.MISSING.value, 0), else_=1)
            stmt = stmt.join(c, c.name == after).where(
                or_(rank > c_rank, and_(rank == c_rank, H.name > c.name))
            )
        return list((await self.session.scalars(stmt)).all())


class _PostgresSteps:
    """The statements whose SQL differs on PostgreSQL (chosen once per driver)."""

    def insert(self, model: Any) -> Any:
        return pg_insert(model)


class _SqliteSteps:
    """The statements whose SQL differs on SQLite (chosen once per driver)."""

    def insert(self, model: Any) -> Any:
        return sqlite_insert(model)


def _seconds(value: float) -> timedelta:
    return timedelta(seconds=value)


def _rowcount(result: Any) -> int:
    return int(result.rowcount) if isinstance(result, CursorResult) else 0


def get_managed_driver(session: AsyncSession) -> ManagedDriver:
    """A :class:`ManagedDriver` for ``session``."""
    return ManagedDriver(session)
