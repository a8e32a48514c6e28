"""The breaker driver: circuit breaker states and their incidents (``states_*``,
``incidents_*``).

Like the queue driver: the session is the caller's, nothing is committed here. Keep-alive
of a breaker's alerts is the managed alerts' (:mod:`alertq.driver.managed`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from alertq.driver.sql import State, dialect_for, rowcount
from alertq.models import CostSimCBIncidentModel

Incident = CostSimCBIncidentModel


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


def get_breaker_driver(session: AsyncSession) -> BreakerDriver:
    """A :class:`BreakerDriver` for ``session``."""
    return BreakerDriver(session)
