"""Retention: delete finished queue rows once they are older than ``ALERTQ_HISTORY_RETENTION``.

A relay that stores every alert of every sender grows without end: Prometheus re-sends each
firing alert every minute, so 1,000 firing alerts are 1.4 million rows a day. Alertmanager
itself keeps its notification log for 120 h. This service, in the manner of River's job
cleaner, deletes ``sent``, ``superseded`` and ``failed`` rows created before the retention,
never ``pending`` ones (undelivered alerts), through the same batches as ``alertq purge``
(:func:`alertq.ops.purge`: one short transaction per 5,000 rows).

A live row is never old: keep-alive re-arms a managed alert's rows by resetting their
``created_at``, and the relay's senders re-send what still fires. The replay after an
Alertmanager restart reads rows of the last 7 days, the default retention.

One pass (:meth:`RetentionService.run_once`, which tests call directly) deletes at most
``MAX_BATCHES`` batches, so a worker that stops is never held up by a large backlog; the
loop runs a pass every ``INTERVAL`` seconds, and at once again after a full one.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from alertq import metrics
from alertq.config import Settings
from alertq.db import DatabaseOutage, repeat
from alertq.driver import PURGE_BATCH
from alertq.limits import PURGEABLE_STATUSES
from alertq.models import Clock, utcnow
from alertq.ops import purge

log = logging.getLogger("alertq.retention")

INTERVAL = 600.0
"""Seconds between passes: rows outlive the retention by at most this much."""
MAX_BATCHES = 20
"""Batches per pass (100,000 rows): then the pass returns and the next one starts."""


class RetentionService:
    """Deletes finished rows older than ``settings.history_retention`` (0: never)."""

    def __init__(
        self,
        settings: Settings,
        session_factory: async_sessionmaker[AsyncSession],
        *,
        clock: Clock = utcnow,
        outage: DatabaseOutage | None = None,
        batch_size: int = PURGE_BATCH,
    ) -> None:
        self.settings = settings
        self.session_factory = session_factory
        self.clock = clock
        self.outage = outage or DatabaseOutage(settings.database_url, logger=log)
        self.batch_size = batch_size

    @property
    def enabled(self) -> bool:
        return self.settings.history_retention > 0

    async def run_once(self) -> int:
        """One pass: delete up to ``MAX_BATCHES`` batches of finished rows created before
        now minus the retention; returns how many rows it deleted."""
        if not self.enabled:
            return 0
        cutoff = self.clock() - timedelta(seconds=self.settings.history_retention)
        deleted = await purge(
            self.session_factory,
            cutoff,
            PURGEABLE_STATUSES,
            batch_size=self.batch_size,
            max_batches=MAX_BATCHES,
        )
        if deleted:
            metrics.RETENTION_DELETED.inc(deleted)
            log.info("retention: deleted %d finished rows created before %s", deleted, cutoff)
        return deleted

    async def run(self, done: asyncio.Event) -> None:
        """Run :meth:`run_once` every ``INTERVAL`` seconds until ``done`` is set; a pass
        that deleted a full ``MAX_BATCHES`` is followed by the next one at once."""
        if not self.enabled:
            return

        async def step() -> float | None:
            return 0.0 if await self.run_once() >= MAX_BATCHES * self.batch_size else None

        await repeat(step, INTERVAL, done, self.outage, log, "retention pass")


__all__ = ["INTERVAL", "MAX_BATCHES", "RetentionService"]
