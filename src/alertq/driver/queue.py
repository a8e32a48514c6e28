"""The queue driver: every statement on the alert queue table (``alerts_*``).

Pure data access. It takes the session it is given, may flush, and never commits or rolls
back: the caller owns the transaction. It makes no decision (retry, backoff, ordering); it
only carries out the ones it is handed. These are the set-based statements the engine's
hot path, the keep-alive service, the producer and the operator actions use.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from operator import itemgetter
from typing import Any, NamedTuple

from sqlalchemy import and_, case, delete, exists, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from alertq.driver.sql import (
    FAILED,
    PENDING,
    SENT,
    SUPERSEDE_OLDER,
    SUPERSEDED,
    Outcome,
    Q,
    aware,
    dialect_for,
    insert_values,
    rowcount,
)

PURGE_BATCH = 5000
_NO_TARGETS = (None, "[]")
_BY_ID = itemgetter(0)


class ClaimedAlert(NamedTuple):
    """A row leased by :meth:`QueueDriver.alerts_claim`, as the engine needs it.

    The payload comes as stored, JSON text of a list of alerts: the worker joins these
    texts into its POST body and never decodes them (:attr:`payload` does, on demand).
    A named tuple, not a frozen dataclass: one is built per claimed row, and a frozen
    dataclass's ``__init__`` (one ``object.__setattr__`` per field) cost 4.5x as much.
    """

    id: int
    payload_json: str
    alert_count: int
    alert_type: str | None
    incident_id: str | None
    fingerprint: str | None
    attempts: int
    max_attempts: int
    delivered_to: list[str]
    created_at: datetime
    reclaimed: bool
    """The row was still leased by another claim whose lease had expired (a dead worker)."""

    @property
    def payload(self) -> list[dict[str, Any]]:
        """The payload, decoded (for logs and tests; the hot path uses ``payload_json``)."""
        value: list[dict[str, Any]] = json.loads(self.payload_json)
        return value


@dataclass(frozen=True, slots=True)
class QueueCounts:
    """What ``alertq worker --drain`` waits on."""

    due: int
    leased: int
    next_due_at: datetime | None


class QueueDriver:
    """Data access for the alert queue. Transaction management is the caller's."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session
        self._sql = dialect_for(session)

    # -- producing

    async def alerts_insert(
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

        The payload is stored as given (validation is the caller's:
        :func:`alertq.enqueue.enqueue_alert`). Nothing is superseded.
        """
        values = insert_values(
            payload, alert_type, circuit_breaker_name, incident_id, fingerprint, max_attempts, now
        )
        return (await self.session.scalars(insert(Q).values(**values).returning(Q))).one()

    async def alerts_enqueue(
        self,
        payload: list[dict[str, Any]],
        alert_type: str,
        circuit_breaker_name: str | None,
        incident_id: str | None,
        *,
        fingerprint: str,
        now: datetime,
        max_attempts: int,
        notify: bool = False,
    ) -> Q:
        """Insert a pending row and retire older unleased pending rows of ``fingerprint``.

        With ``notify``, also NOTIFY workers (PostgreSQL; delivered on commit). On
        PostgreSQL this is one statement, so a producer pays one round trip; on SQLite it is
        an insert then :meth:`alerts_supersede_older`. Returns the new row, attached to the
        session.
        """
        values = insert_values(
            payload, alert_type, circuit_breaker_name, incident_id, fingerprint, max_attempts, now
        )
        return await self._sql.alerts_enqueue(self.session, values, notify)

    async def alerts_notify(self) -> None:
        """On PostgreSQL, NOTIFY workers; delivered when the caller's transaction commits.

        PostgreSQL folds identical notifications of one transaction into one.
        """
        await self._sql.alerts_notify(self.session)

    # -- the delivery cycle

    async def alerts_claim(
        self,
        now: datetime,
        batch_size: int,
        lease_until: datetime,
        lease_token: int,
        worker_id: str,
    ) -> list[ClaimedAlert]:
        """Lease up to ``batch_size`` due rows in one statement and return them.

        Due means pending with ``next_attempt_at <= now``; a row whose lease expired is due
        again, so a dead worker's rows are reclaimed here, with no janitor. A row is skipped
        while another row with the same fingerprint is leased, so one label set is never
        in flight twice. Each claimed row counts an attempt, gets ``lease_token`` (the
        fence for recording its outcome) and becomes due again at ``lease_until``.
        """
        params = {
            "c_now": now,
            "c_limit": batch_size,
            "c_lease": lease_until,
            "c_token": lease_token,
            "c_worker": worker_id,
        }
        rows = await self._sql.alerts_claim(self.session, params)
        # Positional, and no aware() for asyncpg's values (already UTC): per row, it counts.
        return [
            ClaimedAlert(
                r[0],
                r[1],
                r[2],
                r[3],
                r[4],
                r[5],
                r[6],
                r[7],
                # Almost always "[]": decode only what names a target.
                [] if r[8] in _NO_TARGETS else json.loads(r[8]),
                c if (c := r[9]) is not None and c.tzinfo is UTC else aware(c) or now,
                r[10] is not None,
            )
            for r in sorted(rows, key=_BY_ID)
        ]

    async def alerts_record(self, lease_token: int, outcomes: Sequence[Outcome]) -> list[int]:
        """Write every outcome of a delivery cycle in one statement (PostgreSQL: arrays and
        ``unnest``; SQLite: one ``executemany``), each only while its row is still leased by
        ``lease_token``. Returns the ids written, ascending; the others were taken over."""
        return await self._sql.alerts_record(self.session, lease_token, outcomes)

    async def alerts_mark_sent(
        self,
        ids: Sequence[int],
        lease_token: int,
        sent_at: datetime,
        delivered_to: list[str],
    ) -> list[int]:
        """Mark leased rows sent; returns the ids whose lease was still ``lease_token``."""
        return await self._record(
            ids,
            lease_token,
            status=SENT,
            sent_at=sent_at,
            last_error=None,
            delivered_to=delivered_to,
        )

    async def alerts_schedule_retry(
        self,
        ids: Sequence[int],
        lease_token: int,
        next_attempt_at: datetime,
        last_error: str,
        delivered_to: list[str],
    ) -> list[int]:
        """Release leased rows to be tried again at ``next_attempt_at``; fenced."""
        return await self._record(
            ids,
            lease_token,
            status=PENDING,
            next_attempt_at=next_attempt_at,
            last_error=last_error,
            delivered_to=delivered_to,
        )

    async def alerts_mark_failed(
        self, ids: Sequence[int], lease_token: int, last_error: str, delivered_to: list[str]
    ) -> list[int]:
        """Dead-letter leased rows with ``last_error``; fenced."""
        return await self._record(
            ids, lease_token, status=FAILED, last_error=last_error, delivered_to=delivered_to
        )

    async def alerts_mark_superseded(
        self, ids: Sequence[int], lease_token: int, reason: str
    ) -> list[int]:
        """Retire leased rows a newer row with the same fingerprint replaces; fenced."""
        return await self._record(ids, lease_token, status=SUPERSEDED, last_error=reason)

    async def alerts_release(self, ids: Sequence[int], lease_token: int, now: datetime) -> int:
        """Hand back leased rows that were never sent: due at ``now``, the attempt uncounted."""
        stmt = (
            update(Q)
            .where(Q.id.in_(list(ids)), Q.lease_token == lease_token, Q.status == PENDING)
            .values(
                next_attempt_at=now,
                leased_until=None,
                leased_by=None,
                attempts=case((Q.attempts > 0, Q.attempts - 1), else_=0),
            )
            .execution_options(synchronize_session=False)
        )
        return rowcount(await self.session.execute(stmt))

    async def alerts_supersede_older(self, fingerprints: Sequence[str], now: datetime) -> int:
        """Retire pending, unleased rows older than the newest row of their fingerprint.

        "Newer" means a pending row with a higher id; a leased row is left alone
        (its outcome is recorded first, then this runs again for it).
        """
        if not fingerprints:
            return 0
        params = {"fingerprints": list(fingerprints), "now": now}
        return rowcount(await self.session.execute(SUPERSEDE_OLDER, params))

    async def alerts_counts(self, now: datetime) -> QueueCounts:
        """Due rows, leased rows and the earliest future ``next_attempt_at``, in one query."""
        leased = and_(Q.leased_until.is_not(None), Q.leased_until > now)
        due = and_(Q.next_attempt_at <= now, ~leased)
        stmt = select(
            func.count().filter(due),
            func.count().filter(leased),
            # Future only: a due row the claim skipped (its labels are in flight) must not
            # make an idle worker poll without pause.
            func.min(Q.next_attempt_at).filter(Q.next_attempt_at > now),
        ).where(Q.status == PENDING)
        due_n, leased_n, next_due = (await self.session.execute(stmt)).one()
        return QueueCounts(due=int(due_n), leased=int(leased_n), next_due_at=aware(next_due))

    # -- keep-alive

    async def alerts_rearm(
        self, rows: Sequence[tuple[int, list[dict[str, Any]]]], now: datetime
    ) -> list[int]:
        """Make each (row id, payload) pending again, due ``now``, with that payload, if it
        is sent, failed or superseded and no newer pending row has its labels (a resolving row must
        never be overtaken by a re-armed firing one). The row counts as enqueued anew:
        attempts 0, no target has it, ``created_at = now``. One statement for the batch;
        returns the ids re-armed."""
        if not rows:
            return []
        stmt, params = self._sql.rearm_params(rows, now)
        result = await self.session.execute(stmt, params)
        return [int(i) for i in result.scalars().all()]

    async def alerts_update_pending(self, row_id: int, payload: list[dict[str, Any]]) -> bool:
        """Replace the payload of a row still waiting (pending and not leased)."""
        stmt = (
            update(Q)
            .where(Q.id == row_id, Q.status == PENDING, Q.leased_until.is_(None))
            .values(payload=payload)
            .execution_options(synchronize_session=False)
        )
        return rowcount(await self.session.execute(stmt)) > 0

    async def alerts_delete_done(self, row_ids: Sequence[int]) -> int:
        """Delete the given rows that are finished (not pending): a managed alert's rows
        from an earlier episode, so it never owns more than two."""
        if not row_ids:
            return 0
        stmt = delete(Q).where(Q.id.in_(list(row_ids)), Q.status != PENDING)
        return rowcount(await self.session.execute(stmt))

    # -- operator actions and listings

    async def alerts_stats(self) -> dict[str, Any]:
        """Counts by status and the oldest pending row, in one grouped query.

        Returns ``{"pending": n, "sent": n, "failed": n, <any other status>: n,
        "total": n, "oldest_pending_created_at": datetime | None,
        "oldest_pending_due_at": datetime | None}``. The three legacy statuses are always
        present; datetimes are aware UTC.
        """
        stmt = select(
            Q.status, func.count(), func.min(Q.created_at), func.min(Q.next_attempt_at)
        ).group_by(Q.status)
        stats: dict[str, Any] = {PENDING: 0, SENT: 0, FAILED: 0}
        oldest_created: datetime | None = None
        oldest_due: datetime | None = None
        for status, count, min_created, min_due in (await self.session.execute(stmt)).all():
            stats[status] = int(count)
            if status == PENDING:
                oldest_created, oldest_due = min_created, min_due
        stats["total"] = sum(v for k, v in stats.items())
        stats["oldest_pending_created_at"] = aware(oldest_created)
        stats["oldest_pending_due_at"] = aware(oldest_due)
        return stats

    async def alerts_retry_failed(
        self, max_retries: int, now: datetime, *, ids: Sequence[int] | None = None
    ) -> int:
        """Give failed rows ``max_retries`` more attempts, due at ``now``; return how many.

        As in the legacy system, rows qualify while ``attempts < max_attempts + max_retries``.
        A row that a newer row with the same fingerprint has overtaken stays failed: sending
        it would put a stale state into Alertmanager. ``ids`` limits it to those rows.
        """
        newer = aliased(Q)
        stmt = (
            update(Q)
            .where(
                Q.status == FAILED,
                Q.attempts < Q.max_attempts + max_retries,
                or_(
                    Q.fingerprint.is_(None),
                    ~exists().where(newer.fingerprint == Q.fingerprint, newer.id > Q.id),
                ),
            )
            .values(
                status=PENDING,
                max_attempts=Q.max_attempts + max_retries,
                next_attempt_at=now,
                leased_until=None,
                leased_by=None,
            )
            .execution_options(synchronize_session=False)
        )
        if ids is not None:
            stmt = stmt.where(Q.id.in_(list(ids)))
        return rowcount(await self.session.execute(stmt))

    async def alerts_purge_batch(
        self, cutoff: datetime, statuses: Sequence[str], after_id: int, limit: int
    ) -> tuple[int, int]:
        """Delete up to ``limit`` rows created before ``cutoff`` in ``statuses``, with
        ``id > after_id``.

        Returns ``(deleted, last_id)``; ``last_id`` is where the next batch starts. Commit
        between calls to release locks between batches.
        """
        ids_stmt = (
            select(Q.id)
            .where(Q.id > after_id, Q.created_at < cutoff, Q.status.in_(list(statuses)))
            .order_by(Q.id)
            .limit(limit)
        )
        ids = list((await self.session.scalars(ids_stmt)).all())
        if not ids:
            return 0, after_id
        stmt = delete(Q).where(Q.id.in_(ids), Q.status.in_(list(statuses)))
        deleted = rowcount(
            await self.session.execute(stmt.execution_options(synchronize_session=False))
        )
        return deleted, ids[-1]

    async def alerts_get(self, alert_id: int) -> Q | None:
        """One row by id."""
        return await self.session.get(Q, alert_id)

    async def alerts_list(
        self,
        status: str | None = None,
        limit: int = 50,
        before_id: int | None = None,
    ) -> list[Q]:
        """Rows newest first, optionally of one status, keyset-paginated by ``before_id``."""
        stmt = select(Q).order_by(Q.id.desc()).limit(limit)
        if status is not None:
            stmt = stmt.where(Q.status == status)
        if before_id is not None:
            stmt = stmt.where(Q.id < before_id)
        return list((await self.session.scalars(stmt)).all())

    # -- internals

    async def _record(
        self, ids: Sequence[int], lease_token: int, *, status: str, **values: Any
    ) -> list[int]:
        if not ids:
            return []
        stmt = (
            update(Q)
            .where(Q.id.in_(list(ids)), Q.lease_token == lease_token, Q.status == PENDING)
            .values(status=status, leased_until=None, leased_by=None, **values)
            .returning(Q.id)
            .execution_options(synchronize_session=False)
        )
        return list((await self.session.scalars(stmt)).all())


def get_queue_driver(session: AsyncSession) -> QueueDriver:
    """A :class:`QueueDriver` for ``session``."""
    return QueueDriver(session)
