"""The alert queue's data access: every SQL statement on the queue and incident tables.

Pure data access. It takes the session it is given, may flush, and never commits or rolls
back: the caller owns the transaction. It makes no decision (retry, backoff, ordering); it
only carries out the ones it is handed.

The nine methods of the seed's contract keep their names, parameters and meaning. Where the
seed returned ``None`` they return whether the row changed (``bool``). The ``alerts_*``
methods are the set-based statements the engine's hot path uses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CursorResult,
    Integer,
    Table,
    Text,
    and_,
    bindparam,
    case,
    delete,
    exists,
    func,
    insert,
    literal,
    literal_column,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased, make_transient_to_detached
from sqlalchemy.orm.attributes import set_committed_value

from alertq.models import (
    AlertStatus,
    CostSimAlertQueueModel,
    CostSimCBIncidentModel,
    CostSimCBStateModel,
)

Q = CostSimAlertQueueModel
PENDING = AlertStatus.PENDING.value
SENT = AlertStatus.SENT.value
FAILED = AlertStatus.FAILED.value
SUPERSEDED = AlertStatus.SUPERSEDED.value

NOTIFY_CHANNEL = "alertq_enqueued"
PURGE_BATCH = 5000


def _supersede_older_statement() -> Any:
    newer = aliased(Q)
    return (
        update(Q)
        .where(
            Q.status == PENDING,
            Q.fingerprint.in_(bindparam("fingerprints", expanding=True)),
            or_(
                Q.leased_until.is_(None),
                Q.leased_until <= bindparam("now", type_=Q.__table__.c.leased_until.type),
            ),
            # Newer *pending* rows only: the partial fingerprint index then serves the probe,
            # where counting sent rows scanned the table on every enqueue. A newer row is
            # pending whenever this matters (it cannot be claimed while an older one of its
            # fingerprint is leased).
            exists().where(
                newer.fingerprint == Q.fingerprint,
                newer.id > Q.id,
                newer.status == PENDING,
            ),
        )
        .values(
            status=SUPERSEDED,
            last_error="superseded by a newer alert with the same labels",
            leased_until=None,
            leased_by=None,
        )
        .execution_options(synchronize_session=False)
    )


def _enqueue_statement(notify: bool) -> Any:
    """PostgreSQL's one-round-trip enqueue: retire, insert and (optionally) NOTIFY.

    The superseding UPDATE runs in a CTE on the statement's snapshot, which cannot see the
    new row: it retires exactly the older unleased pending rows of the fingerprint.
    """
    t: Table = CostSimAlertQueueModel.__table__  # type: ignore[assignment]
    superseded = (
        update(t)
        .where(
            t.c.fingerprint == bindparam("e_fp", type_=t.c.fingerprint.type),
            # A literal, not a parameter: a generic plan must still match the partial index.
            t.c.status == literal_column("'pending'"),
            or_(
                t.c.leased_until.is_(None),
                t.c.leased_until <= bindparam("e_now", type_=t.c.leased_until.type),
            ),
        )
        .values(
            status=SUPERSEDED,
            last_error="superseded by a newer alert with the same labels",
            leased_until=None,
            leased_by=None,
        )
        .returning(t.c.id)
        .cte("superseded")
    )
    stmt = (
        insert(t)
        .values(
            payload=bindparam("e_payload", type_=t.c.payload.type),
            alert_type=bindparam("e_type", type_=t.c.alert_type.type),
            circuit_breaker_name=bindparam("e_cb", type_=t.c.circuit_breaker_name.type),
            incident_id=bindparam("e_incident", type_=t.c.incident_id.type),
            fingerprint=bindparam("e_fp", type_=t.c.fingerprint.type),
            max_attempts=bindparam("e_max", type_=t.c.max_attempts.type),
            next_attempt_at=bindparam("e_now", type_=t.c.next_attempt_at.type),
            created_at=bindparam("e_now", type_=t.c.created_at.type),
            status=PENDING,
            attempts=0,
            lease_token=0,
            delivered_to=literal([], t.c.delivered_to.type),
        )
        .add_cte(superseded)
    )
    extra = [func.pg_notify(literal(NOTIFY_CHANNEL), literal(""))] if notify else []
    return stmt.returning(*t.c, *extra)


_ENQUEUE_PG = {notify: _enqueue_statement(notify) for notify in (False, True)}


def _claim_statements(dialect: str) -> tuple[Any, Any]:
    """The claim's candidate SELECT and its leasing UPDATE, with bound parameters.

    Built once at import: building this statement cost more client CPU per claim than
    running it. (``'pending'`` stays a bound value: PostgreSQL then keeps re-planning with
    custom plans, which match the partial index; ``tests/test_query_plans.py`` checks it.)
    """
    ts = Q.__table__.c.next_attempt_at.type
    now = bindparam("c_now", type_=ts)
    inflight = aliased(Q)
    pending: Any = Q.status == PENDING
    if dialect == "sqlite":
        # Without ANALYZE statistics SQLite picks the legacy status index and sorts every
        # pending row on each claim (200 ms at 100k pending rows, write lock held).
        # Marking the term unselective makes it walk ix_costsim_alert_queue_due in order.
        pending = func.likelihood(pending, literal_column("0.9375"))
    candidates = (
        select(Q.id, Q.leased_until)
        .where(
            pending,
            Q.next_attempt_at <= now,
            or_(
                Q.fingerprint.is_(None),
                ~exists().where(
                    inflight.fingerprint == Q.fingerprint,
                    inflight.status == PENDING,
                    inflight.leased_until > now,
                    inflight.id != Q.id,
                ),
            ),
        )
        .order_by(Q.next_attempt_at, Q.id)
        .limit(bindparam("c_limit", type_=Integer()))
        .with_for_update(skip_locked=True, of=Q)
    )
    lease = {
        "attempts": Q.attempts + 1,
        "last_attempt_at": now,
        "next_attempt_at": bindparam("c_lease", type_=ts),
        "leased_until": bindparam("c_lease", type_=ts),
        "lease_token": bindparam("c_token", type_=BigInteger()),
        "leased_by": bindparam("c_worker", type_=Text()),
    }
    columns = (
        Q.id,
        Q.payload,
        Q.alert_type,
        Q.incident_id,
        Q.fingerprint,
        Q.attempts,
        Q.max_attempts,
        Q.delivered_to,
        Q.created_at,
    )
    if dialect == "postgresql":
        sub = candidates.subquery()
        stmt = (
            update(Q)
            .where(Q.id == sub.c.id)
            .values(**lease)
            .returning(*columns, sub.c.leased_until)
            .execution_options(synchronize_session=False)
        )
        return None, stmt
    stmt = (
        update(Q)
        .where(Q.id.in_(bindparam("c_ids", expanding=True)))
        .values(**lease)
        .returning(*columns)
        .execution_options(synchronize_session=False)
    )
    return candidates, stmt


_CLAIM_PG = _claim_statements("postgresql")[1]
_CLAIM_SQLITE_CANDIDATES, _CLAIM_SQLITE = _claim_statements("sqlite")

# Built once: every enqueue runs these, and building the supersede statement cost more
# CPU than running it (about 1 ms a call; see bench/profile.py enqueue).
_SUPERSEDE_OLDER = _supersede_older_statement()
_NOTIFY = select(func.pg_notify(literal(NOTIFY_CHANNEL), literal("")))


@dataclass(frozen=True, slots=True)
class ClaimedAlert:
    """A row leased by :meth:`AlertDriver.alerts_claim`, as the engine needs it."""

    id: int
    payload: list[dict[str, Any]]
    alert_type: str | None
    incident_id: str | None
    fingerprint: str | None
    attempts: int
    max_attempts: int
    delivered_to: list[str]
    created_at: datetime
    reclaimed: bool
    """The row was still leased by another claim whose lease had expired (a dead worker)."""


@dataclass(frozen=True, slots=True)
class QueueCounts:
    """What ``alertq worker --drain`` waits on."""

    due: int
    leased: int
    next_due_at: datetime | None


def _rowcount(result: Any) -> int:
    return int(result.rowcount) if isinstance(result, CursorResult) else 0


class AlertDriver:
    """Data access for the alert queue (the seed's ``AlertDriver``).

    Pure database access, no business logic, no HTTP. Transaction management is the
    caller's.
    """

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    @property
    def _dialect(self) -> str:
        return self.session.get_bind().dialect.name

    # ------------------------------------------------------------------ seed contract

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
        stats["oldest_pending_created_at"] = _aware(oldest_created)
        stats["oldest_pending_due_at"] = _aware(oldest_due)
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
        stmt = (
            update(CostSimCBIncidentModel)
            .where(
                CostSimCBIncidentModel.id == incident_id,
                CostSimCBIncidentModel.alert_sent.is_(False),
            )
            .values(alert_sent=True, alert_sent_at=sent_at, alert_response=response)
        )
        return _rowcount(await self.session.execute(stmt)) > 0

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
        values: dict[str, Any] = {
            "payload": payload,
            "alert_type": alert_type,
            "circuit_breaker_name": circuit_breaker_name,
            "incident_id": incident_id,
            "fingerprint": fingerprint,
            "status": PENDING,
            "attempts": 0,
            "delivered_to": [],
        }
        if max_attempts is not None:
            values["max_attempts"] = max_attempts
        if now is not None:
            values["next_attempt_at"] = now
            values["created_at"] = now
        stmt = insert(Q).values(**values).returning(Q)
        row = (await self.session.scalars(stmt)).one()
        return row

    async def alerts_enqueue(
        self,
        payload: list[dict[str, Any]],
        alert_type: str,
        circuit_breaker_name: str | None,
        incident_id: str | None,
        *,
        fingerprint: str,
        now: datetime,
        max_attempts: int = 10,
        notify: bool = False,
    ) -> Q:
        """Insert a pending row and retire older unleased pending rows of ``fingerprint``.

        With ``notify``, also NOTIFY workers (PostgreSQL; delivered on commit). On
        PostgreSQL this is one statement, so a producer pays one round trip; on SQLite it is
        :meth:`insert_alert` then :meth:`alerts_supersede_older`. Returns the new row,
        attached to the session.
        """
        if self._dialect != "postgresql":
            row = await self.insert_alert(
                payload,
                alert_type,
                circuit_breaker_name,
                incident_id,
                fingerprint=fingerprint,
                max_attempts=max_attempts,
                now=now,
            )
            await self.alerts_supersede_older([fingerprint], now)
            return row
        params = {
            "e_payload": payload,
            "e_type": alert_type,
            "e_cb": circuit_breaker_name,
            "e_incident": incident_id,
            "e_fp": fingerprint,
            "e_max": max_attempts,
            "e_now": now,
        }
        result = (await self.session.execute(_ENQUEUE_PG[notify], params)).one()
        values = {c.key: result._mapping[c] for c in Q.__table__.c}
        row = Q(**values)
        # As though loaded by a query: persistent in this session, nothing left to flush.
        make_transient_to_detached(row)
        self.session.add(row)
        return row

    async def retry_failed_alerts(
        self, max_retries: int, now: datetime, *, ids: Sequence[int] | None = None
    ) -> int:
        """Give failed rows ``max_retries`` more attempts, due at ``now``; return how many.

        As in the legacy system, rows qualify while ``attempts < max_attempts + max_retries``.
        A row that a newer row with the same fingerprint has overtaken stays failed: sending
        it would put a stale state into Alertmanager. ``ids`` (an extension) limits it to
        those rows.
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
        return _rowcount(await self.session.execute(stmt))

    async def purge_old_alerts(
        self, cutoff: datetime, statuses: list[str], *, batch_size: int = PURGE_BATCH
    ) -> int:
        """Delete rows created before ``cutoff`` whose status is in ``statuses``.

        Deletes in batches of ``batch_size`` walking the primary key, so no statement
        touches more than that many rows. Returns the total deleted. To also release
        locks between batches, commit between calls of :meth:`purge_batch`.
        """
        total, after_id = 0, 0
        while True:
            deleted, last_id = await self.purge_batch(cutoff, statuses, after_id, batch_size)
            if last_id == after_id:
                return total
            total, after_id = total + deleted, last_id

    # ------------------------------------------------------------------ extensions

    async def purge_batch(
        self, cutoff: datetime, statuses: Sequence[str], after_id: int, limit: int
    ) -> tuple[int, int]:
        """Delete up to ``limit`` purgeable rows with ``id > after_id``.

        Returns ``(deleted, last_id)``; ``last_id`` is where the next batch starts.
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
        deleted = _rowcount(
            await self.session.execute(stmt.execution_options(synchronize_session=False))
        )
        return deleted, ids[-1]

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
        if self._dialect == "postgresql":
            # One statement: lock, lease and return, with the previous lease for reclaims.
            rows: list[Any] = list((await self.session.execute(_CLAIM_PG, params)).all())
        else:
            # SQLite cannot return a joined column; its writers are serialised (BEGIN
            # IMMEDIATE), so reading the candidates first is just as safe.
            found = (await self.session.execute(_CLAIM_SQLITE_CANDIDATES, params)).all()
            previous = {r[0]: r[1] for r in found}
            if not previous:
                return []
            result = await self.session.execute(_CLAIM_SQLITE, {**params, "c_ids": list(previous)})
            rows = [(*r, previous[r[0]]) for r in result.all()]
        claimed = [
            ClaimedAlert(
                id=r[0],
                payload=r[1],
                alert_type=r[2],
                incident_id=r[3],
                fingerprint=r[4],
                attempts=r[5],
                max_attempts=r[6],
                delivered_to=list(r[7] or []),
                created_at=_aware(r[8]) or now,
                reclaimed=r[9] is not None,
            )
            for r in rows
        ]
        claimed.sort(key=lambda c: c.id)
        return claimed

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
        return _rowcount(await self.session.execute(stmt))

    async def alerts_supersede_older(self, fingerprints: Sequence[str], now: datetime) -> int:
        """Retire pending, unleased rows older than the newest row of their fingerprint.

        "Newer" means a pending row with a higher id; a leased row is left alone
        (its outcome is recorded first, then this runs again for it).
        """
        if not fingerprints:
            return 0
        params = {"fingerprints": list(fingerprints), "now": now}
        return _rowcount(await self.session.execute(_SUPERSEDE_OLDER, params))

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
        return QueueCounts(due=int(due_n), leased=int(leased_n), next_due_at=_aware(next_due))

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

    async def notify_enqueued(self) -> None:
        """On PostgreSQL, NOTIFY workers; delivered when the caller's transaction commits.

        PostgreSQL folds identical notifications of one transaction into one.
        """
        if self._dialect == "postgresql":
            await self.session.execute(_NOTIFY)

    # ------------------------------------------------------------------ internals

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

    async def _update_fenced(self, alert: Q, **values: Any) -> bool:
        stmt = (
            update(Q)
            .where(Q.id == alert.id, Q.lease_token == alert.lease_token)
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        applied = _rowcount(await self.session.execute(stmt)) > 0
        if applied:
            for key, value in values.items():
                set_committed_value(alert, key, value)
        return applied


def _aware(value: datetime | None) -> datetime | None:
    # Aggregates bypass the column type, so SQLite hands back naive values or strings.
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def get_alert_driver(session: AsyncSession) -> AlertDriver:
    """Factory function to get an :class:`AlertDriver` for ``session``."""
    return AlertDriver(session)


__all__ = [
    "NOTIFY_CHANNEL",
    "AlertDriver",
    "BreakerDriver",
    "ClaimedAlert",
    "KeepaliveCandidate",
    "QueueCounts",
    "get_alert_driver",
    "get_breaker_driver",
]


# ---------------------------------------------------------------------------- circuit breaker

State = CostSimCBStateModel
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
    """Data access for circuit breaker state, incidents and their alerts' keep-alive.

    Like :class:`AlertDriver`: the session is the caller's, nothing is committed here.
    """

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    @property
    def _dialect(self) -> str:
        return self.session.get_bind().dialect.name

    # -- state

    async def state_ensure(self, name: str, now: datetime) -> None:
        """Create the breaker's state row (closed) unless it exists; safe under races."""
        values = {
            "name": name,
            "disabled": False,
            "consecutive_failures": 0,
            "updated_at": now,
            "created_at": now,
        }
        stmt: Any
        if self._dialect == "postgresql":
            stmt = pg_insert(State).values(**values).on_conflict_do_nothing(index_elements=["name"])
        else:
            stmt = (
                sqlite_insert(State)
                .values(**values)
                .on_conflict_do_nothing(index_elements=["name"])
            )
        await self.session.execute(stmt)

    async def state_lock(self, name: str) -> State | None:
        """The state row, locked ``FOR UPDATE`` until the transaction ends (PostgreSQL; on
        SQLite the write transaction already excludes other writers). Freshly read."""
        stmt = (
            select(State)
            .where(State.name == name)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
        return (await self.session.scalars(stmt)).one_or_none()

    async def state_get(self, name: str) -> State | None:
        """The state row, unlocked and freshly read."""
        stmt = select(State).where(State.name == name).execution_options(populate_existing=True)
        return (await self.session.scalars(stmt)).one_or_none()

    async def state_list(self, after: str | None = None, limit: int | None = None) -> list[State]:
        """State rows by name: those after ``after`` (a keyset cursor), at most ``limit``."""
        stmt = select(State).order_by(State.name).execution_options(populate_existing=True)
        if after is not None:
            stmt = stmt.where(State.name > after)
        if limit is not None:
            stmt = stmt.limit(limit)
        return list((await self.session.scalars(stmt)).all())

    async def state_list_expired(self, now: datetime, limit: int) -> list[State]:
        """Disabled state rows whose ``disabled_until`` has passed, oldest expiry first."""
        stmt = (
            select(State)
            .where(State.disabled.is_(True), State.disabled_until <= now)
            .order_by(State.disabled_until, State.name)
            .limit(limit)
            .execution_options(populate_existing=True)
        )
        return list((await self.session.scalars(stmt)).all())

    async def breaker_counts(self, now: datetime) -> tuple[int, int, int]:
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

    async def state_update(self, state_id: int, **values: Any) -> None:
        """Set columns of one state row."""
        stmt = (
            update(State)
            .where(State.id == state_id)
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        await self.session.execute(stmt)

    # -- incidents

    async def incident_insert(self, **values: Any) -> Incident:
        """Insert an incident and return it."""
        stmt = insert(Incident).values(**values).returning(Incident)
        return (await self.session.scalars(stmt)).one()

    async def incident_get(self, incident_id: str) -> Incident | None:
        """One incident by id, freshly read."""
        stmt = (
            select(Incident)
            .where(Incident.id == incident_id)
            .execution_options(populate_existing=True)
        )
        return (await self.session.scalars(stmt)).one_or_none()

    async def incident_resolve(
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
        return _rowcount(await self.session.execute(stmt)) > 0

    async def incident_list(
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

    async def incident_record_response(self, incident_id: str, response: str) -> bool:
        """Store the last Alertmanager response to one of the incident's alerts."""
        stmt = (
            update(Incident)
            .where(Incident.id == incident_id)
            .values(alert_response=response)
            .execution_options(synchronize_session=False)
        )
        return _rowcount(await self.session.execute(stmt)) > 0

    # -- keep-alive

    async def keepalive_lock_candidates(
        self,
        sent_before: datetime,
        resolved_after: datetime,
        limit: int,
        *,
        firing_type: str = "disable",
        resolving_type: str = "enable",
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
                sent_at=_aware(r[4]),
                last_attempt_at=_aware(r[5]),
                incident_id=r[6],
                incident_resolved=bool(r[7]),
                incident_resolved_at=_aware(r[8]),
            )
            for r in (await self.session.execute(stmt)).all()
        ]

    async def alerts_rearm(
        self, alert_id: int, payload: list[dict[str, Any]], now: datetime
    ) -> bool:
        """Make a sent or failed row pending again, due at ``now``, with ``payload``.

        The row counts as enqueued anew: attempts 0, no target has it, ``created_at = now``.
        Applies only while the row is still sent or failed and no newer row has its
        fingerprint (a resolving row must never be overtaken by a re-armed firing one).
        """
        newer = aliased(Q)
        stmt = (
            update(Q)
            .where(
                Q.id == alert_id,
                Q.status.in_([SENT, FAILED]),
                Q.fingerprint.is_not(None),
                ~exists().where(newer.fingerprint == Q.fingerprint, newer.id > Q.id),
            )
            .values(
                payload=payload,
                status=PENDING,
                attempts=0,
                next_attempt_at=now,
                created_at=now,
                last_error=None,
                delivered_to=[],
                leased_until=None,
                leased_by=None,
            )
            .execution_options(synchronize_session=False)
        )
        return _rowcount(await self.session.execute(stmt)) > 0


def get_breaker_driver(session: AsyncSession) -> BreakerDriver:
    """A :class:`BreakerDriver` for ``session``."""
    return BreakerDriver(session)
