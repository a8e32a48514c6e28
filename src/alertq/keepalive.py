"""Keep-alive: re-send managed alerts (the breaker's among them) as Prometheus re-sends its own.

A service in the manner of River's maintenance services: one pass
(:meth:`KeepaliveService.run_once`, which tests call directly) and a loop that runs a pass
every :func:`keepalive_tick`. The pass and its pure policy are the managed alerts'
(:class:`alertq.managed.ManagedKeepalive`, :func:`alertq.managed.keepalive_step`).
Keep-alives reuse rows, never insert them: a re-armed row then goes through the same
claim, per-fingerprint ordering and fencing as any row.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from alertq import metrics
from alertq.config import Settings
from alertq.db import DatabaseOutage, repeat
from alertq.managed import ManagedKeepalive, keepalive_tick
from alertq.models import Clock, utcnow

log = logging.getLogger("alertq.keepalive")

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

        async def step() -> None:
            await self.run_once()

        tick = keepalive_tick(self.settings.resend_interval)
        await repeat(step, tick, done, self.outage, log, "keep-alive pass")


__all__ = [
    "KeepaliveService",
    "keepalive_tick",
]
