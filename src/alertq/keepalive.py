"""Keep-alive: re-send an open incident's alert, as Prometheus re-sends a firing alert.

A service in the manner of River's maintenance services: a policy (pure), one pass
(:meth:`KeepaliveService.run_once`, which tests call directly) and a loop that runs a pass
every :func:`keepalive_tick`. Keep-alives reuse rows, never insert them: a pass re-arms an
incident's current row through the queue driver, and the row then goes through the same
claim, per-fingerprint ordering and fencing as any row.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from alertq import metrics
from alertq.alerts import (
    BREAKER_FIRING_TYPE,
    BREAKER_RESOLVING_TYPE,
    KEEPALIVE_FACTOR,
    with_ends_at,
)
from alertq.config import Settings
from alertq.db import DatabaseOutage, is_database_error, transaction
from alertq.driver import get_breaker_driver, get_queue_driver
from alertq.models import Clock, utcnow
from alertq.managed import ManagedKeepalive

log = logging.getLogger("alertq.keepalive")

KEEPALIVE_MAX_TICK = 5.0
KEEPALIVE_MIN_TICK = 0.05
KEEPALIVE_BATCH = 500
FIRING_ALERT_TYPE = BREAKER_FIRING_TYPE
RESOLVING_ALERT_TYPE = BREAKER_RESOLVING_TYPE
# --------------------------------------------------------------------------- policy (pure)


def keepalive_tick(resend_interval: float) -> float:
    """Seconds between keep-alive passes: a fifth of ``resend_interval``, at most 5 s.

    A pass runs every tick and re-arms a row once its last send is ``resend_interval -
    tick`` old, so consecutive sends of a kept-alive alert are never more than
    ``resend_interval`` apart (plus the time to deliver them).
    """
    return max(KEEPALIVE_MIN_TICK, min(resend_interval / 5, KEEPALIVE_MAX_TICK))


@dataclass(frozen=True, slots=True)
class KeepaliveDecision:
    """Whether to re-send an incident's alert row now, and with which ``endsAt``."""

    rearm: bool
    reason: str
    ends_at: datetime | None = None
    """A firing alert's fresh ``endsAt``; None keeps the payload as it is (resolving)."""


def keepalive_decision(
    *,
    alert_type: str | None,
    status: str,
    sent_at: datetime | None,
    last_attempt_at: datetime | None,
    incident_resolved: bool,
    incident_resolved_at: datetime | None,
    now: datetime,
    resend_interval: float,
    resolved_retention: float,
) -> KeepaliveDecision:
    """Decide whether an incident's current alert row is re-sent, as Prometheus would.

    * A firing row (``disable``) of an open incident: every ``resend_interval``, with
      ``endsAt = now + 4 × resend_interval``, so Alertmanager never resolves it by itself
      and a restarted Alertmanager learns it again within one interval.
    * A resolving row (``enable``): likewise, while the resolution is younger than
      ``resolved_retention``; then never again.
    * A firing row of a resolved incident: never (it would re-open the alert).
    * A row still pending or leased: left alone (it is on its way already).

    The last send is ``sent_at`` for a sent row, the last attempt for a failed one.
    """
    if status == "sent":
        last = sent_at
    elif status == "failed":
        last = last_attempt_at
    else:
        return KeepaliveDecision(False, f"row is {status}")
    due_age = resend_interval - keepalive_tick(resend_interval)
    if last is not None and (now - last).total_seconds() < due_age:
        return KeepaliveDecision(False, "sent recently")
    if alert_type == FIRING_ALERT_TYPE:
        if incident_resolved:
            return KeepaliveDecision(False, "incident resolved: its firing alert is final")
        ends_at = now + timedelta(seconds=KEEPALIVE_FACTOR * resend_interval)
        return KeepaliveDecision(True, "incident open", ends_at)
    if alert_type == RESOLVING_ALERT_TYPE:
        if not incident_resolved or incident_resolved_at is None:
            return KeepaliveDecision(False, "incident not resolved")
        if (now - incident_resolved_at).total_seconds() >= resolved_retention:
            return KeepaliveDecision(False, "resolved longer ago than the retention")
        return KeepaliveDecision(True, "recently resolved")
    return KeepaliveDecision(False, f"not a breaker alert ({alert_type})")


# --------------------------------------------------------------------------- service


class KeepaliveService:
    """Re-arms incidents' alert rows every :func:`keepalive_tick`.

    ``on_rearm(n)`` is called after a pass that re-armed ``n > 0`` rows (the worker counts
    them and wakes its loops). Database errors go to ``outage`` (the worker's, so a down
    database is reported once per process, not once per pass).
    """

    def __init__(
        self,
        settings: Settings,
        session_factory: async_sessionmaker[AsyncSession],
        *,
        clock: Clock = utcnow,
        on_rearm: Callable[[int], None] | None = None,
        outage: DatabaseOutage | None = None,
    ) -> None:
        self.settings = settings
        self.session_factory = session_factory
        self.clock = clock
        self.on_rearm = on_rearm
        self.outage = outage or DatabaseOutage(settings.database_url, logger=log)
        self._managed = ManagedKeepalive(settings, session_factory, clock=lambda: self.clock())

    async def run_once(self) -> int:
        """One keep-alive pass; returns how many rows were re-armed.

        An incident has at most two queue rows: its firing row (``disable``, enqueued on
        trip) and its resolving row (``enable``, enqueued on resolution). A re-send re-arms
        the incident's *current* row once it is sent or failed and its last send is about
        ``resend_interval`` old: fresh ``endsAt`` (firing), ``pending``, due now, attempts 0,
        no target delivered, ``created_at`` now. So however long an incident stays open, it
        never has more than 2 rows (and a purge by age never deletes an open incident's
        live row).

        The incident rows are locked (``FOR UPDATE SKIP LOCKED`` on PostgreSQL) and their
        ``resolved`` re-checked in this transaction, and a row is only re-armed while no
        newer row has its labels: a firing row can never be re-armed past its resolution.
        """
        now = self.clock()
        interval = self.settings.resend_interval
        retention = self.settings.resolved_retention
        due_age = interval - keepalive_tick(interval)
        rearmed = 0
        async with transaction(self.session_factory) as session:
            queue = get_queue_driver(session)
            candidates = await get_breaker_driver(session).incidents_lock_keepalive_candidates(
                now - timedelta(seconds=due_age),
                now - timedelta(seconds=retention),
                KEEPALIVE_BATCH,
                firing_type=FIRING_ALERT_TYPE,
                resolving_type=RESOLVING_ALERT_TYPE,
            )
            for c in candidates:
                decision = keepalive_decision(
                    alert_type=c.alert_type,
                    status=c.status,
                    sent_at=c.sent_at,
                    last_attempt_at=c.last_attempt_at,
                    incident_resolved=c.incident_resolved,
                    incident_resolved_at=c.incident_resolved_at,
                    now=now,
                    resend_interval=interval,
                    resolved_retention=retention,
                )
                if not decision.rearm:
                    continue
                payload = c.payload
                if decision.ends_at is not None:
                    payload = with_ends_at(payload, decision.ends_at)
                if await queue.alerts_rearm(c.id, payload, now):
                    rearmed += 1
            if rearmed:
                await queue.alerts_notify()
        rearmed += (await self._managed.run_once()).queued
        if rearmed:
            metrics.KEEPALIVES.inc(rearmed)
            log.debug("keep-alive re-armed %d alert rows", rearmed)
            if self.on_rearm is not None:
                self.on_rearm(rearmed)
        return rearmed

    async def run(self, done: asyncio.Event) -> None:
        """Run :meth:`run_once` every :func:`keepalive_tick` until ``done`` is set."""
        tick = keepalive_tick(self.settings.resend_interval)
        while not done.is_set():
            wait = tick
            try:
                await self.run_once()
            except Exception as exc:
                if not is_database_error(exc):
                    log.exception("keep-alive pass failed; retrying in %.1fs", tick)
                else:
                    self.outage.failed(exc)
                    wait = self.outage.backoff(tick)
            else:
                self.outage.recovered()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), wait)


__all__ = [
    "KeepaliveDecision",
    "KeepaliveService",
    "keepalive_decision",
    "keepalive_tick",
]
