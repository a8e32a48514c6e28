"""Keep-alive: re-send managed alerts (the breaker's among them) as Prometheus re-sends its own.

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
)
from alertq.config import Settings
from alertq.db import DatabaseOutage, is_database_error
from alertq.managed import ManagedKeepalive, keepalive_tick
from alertq.models import Clock, utcnow

log = logging.getLogger("alertq.keepalive")

FIRING_ALERT_TYPE = BREAKER_FIRING_TYPE
RESOLVING_ALERT_TYPE = BREAKER_RESOLVING_TYPE
# --------------------------------------------------------------------------- policy (pure)


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
        """One keep-alive pass; returns how many rows it made due.

        Every alert alertq keeps true is a managed alert (:mod:`alertq.managed`), the
        circuit breaker's included, so one pass serves them all: it reads only the managed
        alerts that are due, locked ``SKIP LOCKED`` (a breaker's incident too, so one being
        resolved right now is left to its resolution), re-arms their rows (never inserts:
        at most two rows per alert, however long it fires), resolves expired ones and
        fires HeartbeatMissing for heartbeats past their deadline, once each.
        """
        queued = (await self._managed.run_once()).queued
        if queued:
            metrics.KEEPALIVES.inc(queued)
            log.debug("keep-alive made %d alert rows due", queued)
            if self.on_rearm is not None:
                self.on_rearm(queued)
        return queued

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
