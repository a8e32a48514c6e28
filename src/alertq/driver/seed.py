"""The seed's ``AlertDriver``: its nine methods, kept exactly, over the queue driver.

Code written against the seed keeps working: the nine methods keep their names,
parameters and meaning (where the seed returned ``None`` they return whether the row
changed). Where a method has a set-based equivalent it delegates to
:class:`~alertq.driver.queue.QueueDriver` (which this class extends, so a seed caller also
reaches the ``alerts_*`` methods); the three that work on loaded ORM rows
(``fetch_pending_alerts`` and the fenced ``update_alert_*``) keep their own statements.
The product itself never calls these nine.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.attributes import set_committed_value

from alertq.driver.breaker import BreakerDriver
from alertq.driver.queue import PURGE_BATCH, QueueDriver
from alertq.driver.sql import FAILED, PENDING, SENT, Q, rowcount


class AlertDriver(QueueDriver):
    """Data access for the alert queue (the seed's ``AlertDriver``).

    Pure database access, no business logic, no HTTP. Transaction management is the
    caller's.
    """

    async def fetch_pending_alerts(self, now: datetime, batch_size: int) -> list[Q]:
        """Due rows (``pending`` and ``next_attempt_at <= now``), oldest due first.

        On PostgreSQL the rows are locked ``FOR UPDATE SKIP LOCKED`` until the caller's
        transaction ends, so concurrent callers get disjoint rows.
        """
        stmt = (
            select(Q)
            .where(Q.status == PENDING, Q.next_attempt_at <= now)
            .order_by(Q.next_attempt_at, Q.id)
            .limit(batch_size)
            .with_for_update(skip_locked=True)
        )
        return list((await self.session.scalars(stmt)).all())

    async def fetch_queue_stats(self) -> dict[str, Any]:
        """Counts by status and the oldest pending row: :meth:`QueueDriver.alerts_stats`,
        plus the seed's own key ``oldest_pending`` (the oldest pending ``created_at``, aware
        UTC, or None), which code written against the seed reads."""
        stats = await self.alerts_stats()
        stats["oldest_pending"] = stats["oldest_pending_created_at"]
        return stats

    async def update_alert_sent(self, alert: Q, sent_at: datetime) -> bool:
        """Mark ``alert`` sent at ``sent_at`` (stored in ``sent_at``, unlike the legacy driver).

        Fenced: returns False, changing nothing, if the row was claimed again since
        ``alert`` was loaded.
        """
        return await self._update_fenced(
            alert,
            status=SENT,
            sent_at=sent_at,
            last_error=None,
            leased_until=None,
            leased_by=None,
        )

    async def update_alert_retry(
        self,
        alert: Q,
        last_attempt_at: datetime,
        next_attempt_at: datetime,
        last_error: str | None,
    ) -> bool:
        """Count an attempt and schedule the next one. Fenced like :meth:`update_alert_sent`."""
        return await self._update_fenced(
            alert,
            status=PENDING,
            attempts=alert.attempts + 1,
            last_attempt_at=last_attempt_at,
            next_attempt_at=next_attempt_at,
            last_error=last_error,
            leased_until=None,
            leased_by=None,
        )

    async def update_alert_failed(
        self, alert: Q, last_attempt_at: datetime, last_error: str | None
    ) -> bool:
        """Count an attempt and mark the row permanently failed. Fenced."""
        return await self._update_fenced(
            alert,
            status=FAILED,
            attempts=alert.attempts + 1,
            last_attempt_at=last_attempt_at,
            last_error=last_error,
            leased_until=None,
            leased_by=None,
        )

    async def mark_incident_alert_sent(
        self, incident_id: str, sent_at: datetime, response: str | None = None
    ) -> bool:
        """Record that the incident's first alert was accepted. Later calls change nothing.

        ``response`` (an extension) is stored in ``alert_response``.
        """
        return await BreakerDriver(self.session).incidents_mark_alert_sent(
            incident_id, sent_at, response
        )

    async def insert_alert(
        self,
        payload: list[dict[str, Any]],
        alert_type: str,
        circuit_breaker_name: str | None,
        incident_id: str | None,
        *,
        fingerprint: str | None = None,
        max_attempts: int | None = None,
        now: datetime | None = None,
    ) -> Q:
        """Insert a pending row, due at once (or at ``now``), and return it.

        ``fingerprint`` and ``max_attempts`` are extensions; the payload is stored as given
        (validation is the caller's: :func:`alertq.enqueue.enqueue_alert`).
        """
        return await self.alerts_insert(
            payload,
            alert_type,
            circuit_breaker_name,
            incident_id,
            fingerprint=fingerprint,
            max_attempts=max_attempts,
            now=now,
        )

    async def retry_failed_alerts(
        self, max_retries: int, now: datetime, *, ids: Sequence[int] | None = None
    ) -> int:
        """Give failed rows ``max_retries`` more attempts, due at ``now``; return how many.

        See :meth:`QueueDriver.alerts_retry_failed`; ``ids`` is an extension.
        """
        return await self.alerts_retry_failed(max_retries, now, ids=ids)

    async def purge_old_alerts(
        self, cutoff: datetime, statuses: list[str], *, batch_size: int = PURGE_BATCH
    ) -> int:
        """Delete rows created before ``cutoff`` whose status is in ``statuses``.

        Deletes in batches of ``batch_size`` walking the primary key, so no statement
        touches more than that many rows. Returns the total deleted. To also release
        locks between batches, commit between calls of :meth:`QueueDriver.alerts_purge_batch`.
        """
        total, after_id = 0, 0
        while True:
            deleted, last_id = await self.alerts_purge_batch(cutoff, statuses, after_id, batch_size)
            if last_id == after_id:
                return total
            total, after_id = total + deleted, last_id

    # -- internals

    async def _update_fenced(self, alert: Q, **values: Any) -> bool:
        stmt = (
            update(Q)
            .where(Q.id == alert.id, Q.lease_token == alert.lease_token)
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        applied = rowcount(await self.session.execute(stmt)) > 0
        if applied:
            for key, value in values.items():
                set_committed_value(alert, key, value)
        return applied


def get_alert_driver(session: AsyncSession) -> AlertDriver:
    """Factory function to get an :class:`AlertDriver` for ``session``."""
    return AlertDriver(session)
