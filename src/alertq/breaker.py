"""A database-backed circuit breaker: named breakers, their incidents, and their alerts.

A breaker is *closed* (the guarded feature runs) or *open* (``disabled``: it is off).
It trips after ``failure_threshold`` consecutive drift reports above ``drift_threshold``,
on a report of ``schema_error_threshold`` or more schema errors, or by hand; it closes by
hand, or by itself once ``disabled_until`` has passed.

Every transition is one transaction that first locks the breaker's state row (``SELECT
… FOR UPDATE`` on PostgreSQL; SQLite's ``BEGIN IMMEDIATE`` transactions are serialised),
so any number of replicas may report and check at once:

* tripping creates the incident, opens the breaker and enqueues the firing alert;
* closing resolves the incident, resets the breaker and enqueues the resolving alert.

Both alerts are built from the incident by :mod:`alertq.alerts` with identical labels, so
Alertmanager resolves exactly the alert it was firing. The breaker is a user of managed
alerts (:mod:`alertq.managed`): a trip fires one, a reset resolves it, and keep-alive
(:class:`alertq.keepalive.KeepaliveService`) keeps it true in Alertmanager the way it does
every managed alert. Recording that an incident's alert was delivered is this module's
:data:`INCIDENT_RECORD_HOOK`, which the worker calls after each record.

Incident ids are the first 12 hex characters of a uuid4, as in the legacy system.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from alertq import limits, metrics
from alertq.alerts import (
    BREAKER_FIRING_TYPE,
    BREAKER_RESOLVING_TYPE,
    breaker_firing_payload,
    breaker_resolved_payload,
)
from alertq.config import Settings
from alertq.db import transaction
from alertq.delivery import TargetResult
from alertq.driver import BreakerDriver, get_breaker_driver
from alertq.enqueue import enqueue_alert
from alertq.hooks import Recorded, RecordHook
from alertq.managed import fire_in, resolve_in
from alertq.models import CostSimCBIncidentModel, CostSimCBStateModel, utcnow
from alertq.policy import Verdict

__all__ = [
    "FIRING_ALERT_TYPE",
    "INCIDENT_RECORD_HOOK",
    "RESOLVING_ALERT_TYPE",
    "BreakerCounts",
    "BreakerState",
    "CircuitBreaker",
    "IncidentView",
    "severity_for_drift",
]

FIRING_ALERT_TYPE = BREAKER_FIRING_TYPE
"""``alert_type`` of an incident's firing alert row."""
RESOLVING_ALERT_TYPE = BREAKER_RESOLVING_TYPE
"""``alert_type`` of an incident's resolving alert row."""

SYSTEM_ACTOR = "circuit_breaker"
"""``disabled_by`` of automatic trips."""
TTL_ACTOR = "ttl"
"""``resolved_by`` of automatic recoveries once ``disabled_until`` has passed."""
TTL_NOTES = "disable TTL expired"
SCHEMA_ERROR_SEVERITY = "P2"
MANUAL_SEVERITY = "P3"


@dataclass(frozen=True)
class BreakerState:
    """A breaker's state at the end of an operation. ``disabled`` means open (feature off)."""

    name: str
    disabled: bool
    disabled_by: str | None
    disabled_reason: str | None
    disabled_until: datetime | None
    incident_id: str | None
    consecutive_failures: int
    last_failure_at: datetime | None
    updated_at: datetime

    @classmethod
    def from_row(cls, row: CostSimCBStateModel) -> BreakerState:
        return cls(
            name=row.name,
            disabled=row.disabled,
            disabled_by=row.disabled_by,
            disabled_reason=row.disabled_reason,
            disabled_until=row.disabled_until,
            incident_id=row.incident_id,
            consecutive_failures=row.consecutive_failures,
            last_failure_at=row.last_failure_at,
            updated_at=row.updated_at,
        )


@dataclass(frozen=True)
class IncidentView:
    """One incident (a trip, from trip to resolution), with its details parsed."""

    id: str
    circuit_breaker_name: str
    timestamp: datetime
    reason: str
    severity: str
    drift_score: float | None
    sample_count: int | None
    details: dict[str, Any] | None
    resolved: bool
    resolved_at: datetime | None
    resolved_by: str | None
    resolution_notes: str | None
    alert_sent: bool
    alert_sent_at: datetime | None
    alert_response: str | None

    @classmethod
    def from_row(cls, row: CostSimCBIncidentModel) -> IncidentView:
        details: dict[str, Any] | None = None
        if row.details_json:
            try:
                parsed = json.loads(row.details_json)
            except ValueError:
                parsed = {"raw": row.details_json}
            details = parsed if isinstance(parsed, dict) else {"value": parsed}
        return cls(
            id=row.id,
            circuit_breaker_name=row.circuit_breaker_name,
            timestamp=row.timestamp,
            reason=row.reason,
            severity=row.severity,
            drift_score=row.drift_score,
            sample_count=row.sample_count,
            details=details,
            resolved=row.resolved,
            resolved_at=row.resolved_at,
            resolved_by=row.resolved_by,
            resolution_notes=row.resolution_notes,
            alert_sent=row.alert_sent,
            alert_sent_at=row.alert_sent_at,
            alert_response=row.alert_response,
        )


@dataclass(frozen=True, slots=True)
class BreakerCounts:
    """Totals the bounded lists leave out: breakers, open breakers, open incidents."""

    breakers: int
    open_breakers: int
    open_incidents: int


def severity_for_drift(drift_score: float, settings: Settings) -> str:
    """``P1`` at or above ``severity_p1_drift``, ``P2`` at or above ``severity_p2_drift``,
    else ``P3``."""
    if drift_score >= settings.severity_p1_drift:
        return "P1"
    if drift_score >= settings.severity_p2_drift:
        return "P2"
    return "P3"


@dataclass(frozen=True)
class _Trip:
    reason: str
    severity: str
    disabled_by: str
    disabled_until: datetime | None
    drift_score: float | None = None
    sample_count: int | None = None
    details: dict[str, Any] | None = None


class CircuitBreaker:
    """Named circuit breakers stored in ``costsim_cb_state``; safe with many replicas.

    Each operation runs in its own transaction, or in the caller's when ``session`` is
    given (then nothing is committed here: if the caller rolls back, so does the
    transition, incident and alert included). ``clock`` is injectable for tests.
    """

    def __init__(
        self,
        settings: Settings,
        session_factory: async_sessionmaker[AsyncSession],
        *,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.settings = settings
        self.session_factory = session_factory
        self.clock = clock

    # ------------------------------------------------------------------ transitions

    async def report_drift(
        self,
        name: str,
        drift_score: float,
        sample_count: int = 1,
        details: dict[str, Any] | None = None,
        *,
        session: AsyncSession | None = None,
    ) -> BreakerState:
        """Report one drift measurement.

        Above ``drift_threshold`` it counts a consecutive failure, and the
        ``failure_threshold``-th one trips the breaker (severity from the score, TTL
        ``default_disable_ttl``); at or below the threshold the count goes back to 0.
        Reports while the breaker is open change nothing. (In every transition, a breaker
        whose ``disabled_until`` has passed is first closed, as :meth:`is_disabled` would.)
        """
        limits.check_name(name)
        drift_score = limits.check_drift_score(drift_score, "drift_score")
        limits.check_count(sample_count, "sample_count", 1, limits.MAX_SAMPLE_COUNT)
        async with self._transaction(session) as s:
            driver = get_breaker_driver(s)
            now = self.clock()
            row = await self._lock_current(s, driver, name, now)
            if row.disabled:
                return BreakerState.from_row(row)
            if drift_score <= self.settings.drift_threshold:
                await driver.states_update(row.id, consecutive_failures=0, updated_at=now)
            else:
                failures = row.consecutive_failures + 1
                await driver.states_update(
                    row.id, consecutive_failures=failures, last_failure_at=now, updated_at=now
                )
                if failures >= self.settings.failure_threshold:
                    reason = (
                        f"drift {drift_score:g} above {self.settings.drift_threshold:g} "
                        f"for {failures} consecutive reports"
                    )
                    trip = _Trip(
                        reason=reason,
                        severity=severity_for_drift(drift_score, self.settings),
                        disabled_by=SYSTEM_ACTOR,
                        disabled_until=self._default_until(now),
                        drift_score=drift_score,
                        sample_count=sample_count,
                        details=details,
                    )
                    await self._trip(s, driver, row, now, trip)
            return await self._state(driver, name)

    async def report_schema_error(
        self,
        name: str,
        error_count: int,
        details: dict[str, Any] | None = None,
        *,
        session: AsyncSession | None = None,
    ) -> BreakerState:
        """Report ``error_count`` schema errors seen at once; ``schema_error_threshold`` or
        more trip the breaker (severity P2). Fewer only record ``last_failure_at``."""
        limits.check_name(name)
        limits.check_count(error_count, "error_count", 0, limits.MAX_ERROR_COUNT)
        async with self._transaction(session) as s:
            driver = get_breaker_driver(s)
            now = self.clock()
            row = await self._lock_current(s, driver, name, now)
            if row.disabled or error_count <= 0:
                return BreakerState.from_row(row)
            await driver.states_update(row.id, last_failure_at=now, updated_at=now)
            if error_count >= self.settings.schema_error_threshold:
                trip = _Trip(
                    reason=(
                        f"{error_count} schema errors "
                        f"(threshold {self.settings.schema_error_threshold})"
                    ),
                    severity=SCHEMA_ERROR_SEVERITY,
                    disabled_by=SYSTEM_ACTOR,
                    disabled_until=self._default_until(now),
                    sample_count=error_count,
                    details=details,
                )
                await self._trip(s, driver, row, now, trip)
            return await self._state(driver, name)

    async def disable(
        self,
        name: str,
        reason: str,
        disabled_by: str,
        disabled_until: datetime | None = None,
        *,
        session: AsyncSession | None = None,
    ) -> BreakerState:
        """Open the breaker by hand (severity P3) until ``disabled_until``, or until enabled
        when None. Idempotent: an open breaker stays as it is (same incident, no alert)."""
        limits.check_name(name)
        limits.check_text(reason, "reason")
        if disabled_until is not None and disabled_until.tzinfo is None:
            raise ValueError(f"naive datetime {disabled_until!r}: pass an aware UTC datetime")
        async with self._transaction(session) as s:
            driver = get_breaker_driver(s)
            now = self.clock()
            if disabled_until is not None and disabled_until <= now:
                raise ValueError(
                    f"disabled_until {disabled_until.isoformat()} is not in the future"
                )
            row = await self._lock_current(s, driver, name, now)
            if row.disabled:
                return BreakerState.from_row(row)
            trip = _Trip(reason, MANUAL_SEVERITY, disabled_by, disabled_until)
            await self._trip(s, driver, row, now, trip)
            return await self._state(driver, name)

    async def enable(
        self,
        name: str,
        enabled_by: str,
        reason: str | None = None,
        *,
        session: AsyncSession | None = None,
    ) -> BreakerState:
        """Close the breaker: resolve its incident and send the resolving alert.

        Idempotent: a closed breaker stays as it is (no alert). An unknown name creates
        the breaker, closed.
        """
        limits.check_name(name)
        limits.check_optional_text(reason, "reason")
        async with self._transaction(session) as s:
            driver = get_breaker_driver(s)
            now = self.clock()
            row = await self._lock(driver, name, now)
            if row.disabled:
                await self._recover(s, driver, row, now, enabled_by, reason)
            return await self._state(driver, name)

    async def is_disabled(self, name: str) -> bool:
        """Whether the breaker is open. Unknown breakers are closed (no row is created).

        Once ``disabled_until`` has passed, the first caller closes it (resolving the
        incident and enqueuing the resolving alert) and every caller gets False. The
        recovery re-checks under the row lock, so among concurrent callers on any number
        of replicas exactly one performs it.
        """
        now = self.clock()
        async with transaction(self.session_factory) as s:
            row = await get_breaker_driver(s).states_get(name)
            if row is None or not row.disabled:
                return False
            if not _expired(row, now):
                return True
        async with transaction(self.session_factory) as s:
            driver = get_breaker_driver(s)
            row = await driver.states_lock(name)
            if row is None or not row.disabled:
                return False  # another caller recovered it
            now = self.clock()
            if not _expired(row, now):
                return True  # re-opened with a new TTL meanwhile
            await self._recover(s, driver, row, now, TTL_ACTOR, TTL_NOTES)
            metrics.BREAKER_OPEN.labels(name).set(0)
            return False

    # ------------------------------------------------------------------ reads

    async def get_state(self, name: str) -> BreakerState | None:
        """The breaker's stored state, or None if it was never used. Never recovers."""
        async with transaction(self.session_factory) as s:
            row = await get_breaker_driver(s).states_get(name)
            return None if row is None else BreakerState.from_row(row)

    async def list_states(
        self, after: str | None = None, limit: int | None = None
    ) -> list[BreakerState]:
        """Breakers' stored states by name: after ``after`` (a keyset cursor), at most
        ``limit`` (all without one: the CLI's report)."""
        async with transaction(self.session_factory) as s:
            rows = await get_breaker_driver(s).states_list(after, limit)
            return [BreakerState.from_row(r) for r in rows]

    async def list_expired(self, limit: int) -> list[BreakerState]:
        """Up to ``limit`` breakers still disabled though their ``disabled_until`` passed
        (due for TTL recovery by :meth:`is_disabled`)."""
        async with transaction(self.session_factory) as s:
            rows = await get_breaker_driver(s).states_list_expired(self.clock(), limit)
            return [BreakerState.from_row(r) for r in rows]

    async def counts(self) -> BreakerCounts:
        """How many breakers there are, how many are open now, how many incidents open."""
        async with transaction(self.session_factory) as s:
            total, open_now, incidents = await get_breaker_driver(s).states_counts(self.clock())
            return BreakerCounts(total, open_now, incidents)

    async def list_incidents(
        self,
        name: str | None = None,
        include_resolved: bool = False,
        limit: int = 100,
        before: str | None = None,
    ) -> list[IncidentView]:
        """Incidents newest first: open ones, or all with ``include_resolved``; at most
        ``limit`` (1 to :data:`~alertq.limits.MAX_LIST_LIMIT`); with ``before`` (an
        incident id) those listed after that one."""
        if name is not None:
            limits.check_name(name)
        limits.check_count(limit, "limit", 1, limits.MAX_LIST_LIMIT)
        async with transaction(self.session_factory) as s:
            rows = await get_breaker_driver(s).incidents_list(name, include_resolved, limit, before)
            return [IncidentView.from_row(r) for r in rows]

    # ------------------------------------------------------------------ internals

    @asynccontextmanager
    async def _transaction(self, session: AsyncSession | None) -> AsyncIterator[AsyncSession]:
        if session is not None:
            yield session
            return
        async with transaction(self.session_factory) as s:
            yield s

    def _default_until(self, now: datetime) -> datetime | None:
        ttl = self.settings.default_disable_ttl
        return None if ttl is None else now + timedelta(seconds=ttl)

    async def _lock(self, driver: BreakerDriver, name: str, now: datetime) -> CostSimCBStateModel:
        """The state row, created on first use (race-free) and locked."""
        if not name or not name.strip():
            raise ValueError("a circuit breaker needs a non-empty name")
        row = await driver.states_lock(name)
        if row is None:
            await driver.states_ensure(name, now)
            row = await driver.states_lock(name)
        assert row is not None
        return row

    async def _lock_current(
        self, session: AsyncSession, driver: BreakerDriver, name: str, now: datetime
    ) -> CostSimCBStateModel:
        """:meth:`_lock`, closing the breaker first if its TTL has run out."""
        row = await self._lock(driver, name, now)
        if row.disabled and _expired(row, now):
            await self._recover(session, driver, row, now, TTL_ACTOR, TTL_NOTES)
            row = await self._lock(driver, name, now)
        return row

    async def _state(self, driver: BreakerDriver, name: str) -> BreakerState:
        row = await driver.states_get(name)
        assert row is not None
        metrics.BREAKER_OPEN.labels(name).set(1 if row.disabled else 0)
        return BreakerState.from_row(row)

    async def _trip(
        self,
        session: AsyncSession,
        driver: BreakerDriver,
        row: CostSimCBStateModel,
        now: datetime,
        trip: _Trip,
    ) -> None:
        """Create the incident, open the breaker and enqueue the firing alert."""
        incident_id = uuid.uuid4().hex[:12]
        details_json = None if trip.details is None else json.dumps(trip.details, default=str)
        view = IncidentView(
            id=incident_id,
            circuit_breaker_name=row.name,
            timestamp=now,
            reason=trip.reason,
            severity=trip.severity,
            drift_score=trip.drift_score,
            sample_count=trip.sample_count,
            details=trip.details,
            resolved=False,
            resolved_at=None,
            resolved_by=None,
            resolution_notes=None,
            alert_sent=False,
            alert_sent_at=None,
            alert_response=None,
        )
        # Built (and validated) before any write, so a bad setting changes nothing.
        payload = breaker_firing_payload(
            view,
            now=now,
            resend_interval=self.settings.resend_interval,
            instance=self.settings.instance,
            runbook_url=self.settings.runbook_url,
            generator_url=self.settings.generator_url,
        )
        incident = await driver.incidents_insert(
            id=incident_id,
            circuit_breaker_name=row.name,
            timestamp=now,
            reason=trip.reason,
            severity=trip.severity,
            drift_score=trip.drift_score,
            sample_count=trip.sample_count,
            details_json=details_json,
            resolved=False,
            alert_sent=False,
        )
        await driver.states_update(
            row.id,
            disabled=True,
            disabled_by=trip.disabled_by,
            disabled_reason=trip.reason,
            disabled_until=trip.disabled_until,
            incident_id=incident.id,
            updated_at=now,
        )
        # The alert is a managed alert: keep-alive re-sends it while it fires, and the
        # resolution resolves exactly it. Its queue rows keep the breaker's legacy types.
        (alert,) = payload
        await fire_in(
            session,
            self.settings,
            alert["labels"],
            alert["annotations"],
            alert.get("generatorURL"),
            now=now,
            starts_at=incident.timestamp,
            firing_type=FIRING_ALERT_TYPE,
            resolving_type=RESOLVING_ALERT_TYPE,
            circuit_breaker_name=row.name,
            incident_id=incident.id,
        )

    async def _recover(
        self,
        session: AsyncSession,
        driver: BreakerDriver,
        row: CostSimCBStateModel,
        now: datetime,
        resolved_by: str,
        notes: str | None,
    ) -> None:
        """Resolve the open incident, close the breaker and enqueue the resolving alert."""
        incident = None if row.incident_id is None else await driver.incidents_get(row.incident_id)
        payload = None
        if incident is not None and not incident.resolved:
            resolved = replace(
                IncidentView.from_row(incident),
                resolved=True,
                resolved_at=now,
                resolved_by=resolved_by,
                resolution_notes=notes,
            )
            payload = breaker_resolved_payload(
                resolved,
                instance=self.settings.instance,
                runbook_url=self.settings.runbook_url,
                generator_url=self.settings.generator_url,
            )
            await driver.incidents_resolve(incident.id, now, resolved_by, notes)
        await driver.states_update(
            row.id,
            disabled=False,
            disabled_by=None,
            disabled_reason=None,
            disabled_until=None,
            incident_id=None,
            consecutive_failures=0,
            updated_at=now,
        )
        if payload is not None and incident is not None:
            (alert,) = payload
            out = await resolve_in(
                session, self.settings, alert["labels"], now=now, annotations=alert["annotations"]
            )
            if not out.changed:
                # An incident opened before managed alerts existed (or its managed alert
                # was resolved by hand): still tell Alertmanager, once.
                await enqueue_alert(
                    session,
                    payload,
                    RESOLVING_ALERT_TYPE,
                    row.name,
                    incident.id,
                    now=now,
                    max_attempts=self.settings.max_attempts,
                    notify_throttle=self.settings.notify_throttle,
                )


def _expired(row: CostSimCBStateModel, now: datetime) -> bool:
    return row.disabled_until is not None and row.disabled_until <= now


async def _record_incident_outcomes(
    session: AsyncSession, recorded: Sequence[Recorded], now: datetime
) -> None:
    """Keep incidents in step with their alerts' delivery (a record hook).

    The first accepted firing alert sets ``alert_sent`` (once); every delivery attempt of
    an incident's alert stores Alertmanager's answer in ``alert_response``.
    """
    driver = get_breaker_driver(session)
    for r in recorded:
        if (
            r.row.incident_id is not None
            and r.row.alert_type == FIRING_ALERT_TYPE
            and r.decision.verdict is Verdict.SENT
        ):
            await driver.incidents_mark_alert_sent(
                r.row.incident_id, now, _response_summary(r.results)
            )
    for r in recorded:
        if r.row.incident_id is not None and r.results:
            await driver.incidents_record_response(r.row.incident_id, _response_summary(r.results))


INCIDENT_RECORD_HOOK: RecordHook = _record_incident_outcomes
"""The breaker's record hook; :class:`alertq.engine.AlertWorker` runs it by default."""


def _response_summary(results: Sequence[TargetResult]) -> str:
    return "; ".join(
        f"{r.target}: {'accepted' if r.ok else r.error} (HTTP {r.status_code})" for r in results
    )[:1000]
