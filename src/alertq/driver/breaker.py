"""The breaker driver: circuit breaker states and their incidents (``states_*``,
``incidents_*``).

Like the queue driver: the session is the caller's, nothing is committed here. The one
statement that reads the queue table, :meth:`BreakerDriver.incidents_lock_keepalive_candidates`,
is here because what it locks is incidents; re-arming the rows it finds is the queue
driver's (:meth:`alertq.driver.queue.QueueDriver.alerts_rearm`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, exists, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from alertq.driver.sql import FAILED, SENT, Q, State, aware, dialect_for, rowcount
from alertq.models import CostSimCBIncidentModel

Incident = CostSimCBIncidentModel


@dataclass(frozen=True, slots=True)
class KeepaliveCandidate:
    """A sent or failed breaker alert row, with its incident locked, that may be re-sent."""

    id: int
    alert_type: str
    status: str
    payload: list[dict[str, Any]]
    sent_at: datetime | None
    last_attempt_at: datetime | None
    incident_id: str
    incident_resolved: bool
    incident_resolved_at: datetime | None


class BreakerDriver:
    """Data access for circuit breaker states and incidents."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session
        self._sql = dialect_for(session)

    # -- states

    async def states_ensure(self, name: str, now: datetime) -> None:
        """Create the breaker's state row (closed) unless it exists; safe under races."""
        values = {
            "name": name,
            "disabled": False,
            "consecutive_failures": 0,
            "updated_at": now,
            "created_at": now,
        }
        await self.session.execute(self._sql.states_insert_ignore(values))

    async def states_lock(self, name: str) -> State | None:
        """The state row, locked ``FOR UPDATE`` until the transaction ends (PostgreSQL; on
        SQLite the write transaction already excludes other writers). Freshly read."""
        stmt = (
            select(State)
            .where(State.name == name)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
        return (await self.session.scalars(stmt)).one_or_none()

    async def states_get(self, name: str) -> State | None:
        """The state row, unlocked and freshly read."""
        stmt = select(State).where(State.name == name).execution_options(populate_existing=True)
        return (await self.session.scalars(stmt)).one_or_none()

    async def states_list(self, after: str | None = None, limit: int | None = None) -> list[State]:
        """State rows by name: those after ``after`` (a keyset cursor), at most ``limit``."""
        stmt = select(State).order_by(State.name).execution_options(populate_existing=True)
        if after is not None:
            stmt = stmt.where(State.name > after)
        if limit is not None:
            stmt = stmt.limit(limit)
        return list((await self.session.scalars(stmt)).all())

    async def states_list_expired(self, now: datetime, limit: int) -> list[State]:
        """Disabled state rows whose ``disabled_until`` has passed, oldest expiry first."""
        stmt = (
            select(State)
            .where(State.disabled.is_(True), State.disabled_until <= now)
            .order_by(State.disabled_until, State.name)
            .limit(limit)
            .execution_options(populate_existing=True)
        )
        return list((await self.session.scalars(stmt)).all())

    async def states_counts(self, now: datetime) -> tuple[int, int, int]:
        """(breakers, open breakers as of ``now``, unresolved incidents)."""
        open_now = and_(
            State.disabled.is_(True),
            or_(State.disabled_until.is_(None), State.disabled_until > now),
        )
        states = select(func.count(), func.count().filter(open_now)).select_from(State)
        total, open_count = (await self.session.execute(states)).one()
        incidents = select(func.count()).select_from(Incident).where(Incident.resolved.is_(False))
        open_incidents = (await self.session.execute(incidents)).scalar_one()
        return int(total), int(open_count), int(open_incidents)

    async def states_update(self, state_id: int, **values: Any) -> None:
        """Set columns of one state row."""
        stmt = (
            update(State)
            .where(State.id == state_id)
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        await self.session.execute(stmt)

    # -- incidents

    async def incidents_insert(self, **values: Any) -> Incident:
        """Insert an incident and return it."""
        stmt = insert(Incident).values(**values).returning(Incident)
        return (await self.session.scalars(stmt)).one()

    async def incidents_get(self, incident_id: str) -> Incident | None:
        """One incident by id, freshly read."""
        stmt = (
            select(Incident)
            .where(Incident.id == incident_id)
            .execution_options(populate_existing=True)
        )
        return (await self.session.scalars(stmt)).one_or_none()

    async def incidents_resolve(
        self, incident_id: str, resolved_at: datetime, resolved_by: str, notes: str | None
    ) -> bool:
        """Resolve an open incident; False if it was already resolved (or is missing)."""
        stmt = (
            update(Incident)
            .where(Incident.id == incident_id, Incident.resolved.is_(False))
            .values(
                resolved=True,
                resolved_at=resolved_at,
                resolved_by=resolved_by,
                resolution_notes=notes,
            )
            .execution_options(synchronize_session=False)
        )
        return rowcount(await self.session.execute(stmt)) > 0

    async def incidents_list(
        self, name: str | None, include_resolved: bool, limit: int, before: str | None = None
    ) -> list[Incident]:
        """Incidents newest first, optionally of one breaker, open ones only by default;
        with ``before`` (an incident id, the keyset cursor) only those listed after it."""
        stmt = (
            select(Incident)
            .order_by(Incident.timestamp.desc(), Incident.id.desc())
            .limit(limit)
            .execution_options(populate_existing=True)
        )
        if before is not None:
            cursor = select(Incident.timestamp).where(Incident.id == before).scalar_subquery()
            stmt = stmt.where(
                or_(
                    Incident.timestamp < cursor,
                    and_(Incident.timestamp == cursor, Incident.id < before),
                )
            )
        if name is not None:
            stmt = stmt.where(Incident.circuit_breaker_name == name)
        if not include_resolved:
            stmt = stmt.where(Incident.resolved.is_(False))
        return list((await self.session.scalars(stmt)).all())

    async def incidents_mark_alert_sent(
        self, incident_id: str, sent_at: datetime, response: str | None = None
    ) -> bool:
        """Record that the incident's first alert was accepted. Later calls change nothing.

        ``response`` is stored in ``alert_response``.
        """
        stmt = (
            update(Incident)
            .where(Incident.id == incident_id, Incident.alert_sent.is_(False))
            .values(alert_sent=True, alert_sent_at=sent_at, alert_response=response)
        )
        return rowcount(await self.session.execute(stmt)) > 0

    async def incidents_record_response(self, incident_id: str, response: str) -> bool:
        """Store the last Alertmanager response to one of the incident's alerts."""
        stmt = (
            update(Incident)
            .where(Incident.id == incident_id)
            .values(alert_response=response)
            .execution_options(synchronize_session=False)
        )
        return rowcount(await self.session.execute(stmt)) > 0

    async def incidents_lock_keepalive_candidates(
        self,
        sent_before: datetime,
        resolved_after: datetime,
        limit: int,
        *,
        firing_type: str,
        resolving_type: str,
    ) -> list[KeepaliveCandidate]:
        """Breaker alert rows that may be due for a re-send, their incidents locked.

        A candidate is the *current* row of an incident (no newer row has its fingerprint),
        ``sent`` before ``sent_before`` or ``failed`` with its last attempt before it; a
        firing row (``firing_type``) of an open incident, or a resolving row of an incident
        resolved after ``resolved_after``. On PostgreSQL the incident rows are locked
        ``FOR UPDATE SKIP LOCKED``: an incident being resolved right now is skipped, and
        one locked here makes its resolution wait until this transaction ends. The values
        returned are those of the locked rows.
        """
        newer = aliased(Q)
        stmt = (
            select(
                Q.id,
                Q.alert_type,
                Q.status,
                Q.payload,
                Q.sent_at,
                Q.last_attempt_at,
                Incident.id,
                Incident.resolved,
                Incident.resolved_at,
            )
            .select_from(Incident)
            .join(Q, Q.incident_id == Incident.id)
            .where(
                or_(
                    Incident.resolved.is_(False),
                    Incident.resolved_at > resolved_after,
                ),
                or_(
                    and_(
                        Q.alert_type == firing_type,
                        Incident.resolved.is_(False),
                    ),
                    and_(
                        Q.alert_type == resolving_type,
                        Incident.resolved.is_(True),
                    ),
                ),
                or_(
                    and_(Q.status == SENT, Q.sent_at <= sent_before),
                    and_(Q.status == FAILED, Q.last_attempt_at <= sent_before),
                ),
                Q.fingerprint.is_not(None),
                ~exists().where(newer.fingerprint == Q.fingerprint, newer.id > Q.id),
            )
            .order_by(Q.id)
            .limit(limit)
            .with_for_update(of=Incident, skip_locked=True)
        )
        return [
            KeepaliveCandidate(
                id=r[0],
                alert_type=r[1],
                status=r[2],
                payload=r[3],
                sent_at=aware(r[4]),
                last_attempt_at=aware(r[5]),
                incident_id=r[6],
                incident_resolved=bool(r[7]),
                incident_resolved_at=aware(r[8]),
            )
            for r in (await self.session.execute(stmt)).all()
        ]


def get_breaker_driver(session: AsyncSession) -> BreakerDriver:
    """A :class:`BreakerDriver` for ``session``."""
    return BreakerDriver(session)
