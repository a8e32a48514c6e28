"""Statements built once, per dialect, and the helpers every driver module shares.

Building a statement cost more client CPU than running it on the hot path, so the hot
statements are built at import. Where PostgreSQL and SQLite need different SQL, a
:class:`Dialect` object holds both the statements and the few steps that differ; a driver
picks it once, in its constructor, and its methods never branch on the dialect.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CursorResult,
    Integer,
    Table,
    Text,
    bindparam,
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

from alertq.models import AlertStatus, CostSimAlertQueueModel, CostSimCBStateModel

Q = CostSimAlertQueueModel
State = CostSimCBStateModel
PENDING = AlertStatus.PENDING.value
SENT = AlertStatus.SENT.value
FAILED = AlertStatus.FAILED.value
SUPERSEDED = AlertStatus.SUPERSEDED.value

NOTIFY_CHANNEL = "alertq_enqueued"
SUPERSEDED_REASON = "superseded by a newer alert with the same labels"


def rowcount(result: Any) -> int:
    return int(result.rowcount) if isinstance(result, CursorResult) else 0


def aware(value: datetime | None) -> datetime | None:
    # Aggregates bypass the column type, so SQLite hands back naive values or strings.
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def insert_values(
    payload: list[dict[str, Any]],
    alert_type: str,
    circuit_breaker_name: str | None,
    incident_id: str | None,
    fingerprint: str | None,
    max_attempts: int | None,
    now: datetime | None,
) -> dict[str, Any]:
    """Column values of a new pending row; omitted ones take the model's defaults."""
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
    return values


# ---------------------------------------------------------------------------- statements


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
            last_error=SUPERSEDED_REASON,
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
            last_error=SUPERSEDED_REASON,
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


SUPERSEDE_OLDER = _supersede_older_statement()
_ENQUEUE_PG = {notify: _enqueue_statement(notify) for notify in (False, True)}
_CLAIM_PG = _claim_statements("postgresql")[1]
_CLAIM_SQLITE_CANDIDATES, _CLAIM_SQLITE = _claim_statements("sqlite")
_NOTIFY = select(func.pg_notify(literal(NOTIFY_CHANNEL), literal("")))


# ---------------------------------------------------------------------------- dialects


class Dialect:
    """The steps whose SQL differs between PostgreSQL and SQLite."""

    name = ""

    async def alerts_claim(self, session: AsyncSession, params: dict[str, Any]) -> list[Any]:
        """Lease due rows; each returned row is the claim columns plus the previous
        ``leased_until`` (not None: the row was reclaimed from a dead worker)."""
        raise NotImplementedError

    async def alerts_enqueue(
        self, session: AsyncSession, values: dict[str, Any], notify: bool
    ) -> CostSimAlertQueueModel:
        """Insert ``values`` (see :func:`insert_values`) and retire older unleased pending
        rows of its fingerprint; NOTIFY workers when ``notify`` and the dialect can."""
        raise NotImplementedError

    async def alerts_notify(self, session: AsyncSession) -> None:
        """NOTIFY workers, if the dialect can (delivered when the transaction commits)."""
        raise NotImplementedError

    def states_insert_ignore(self, values: dict[str, Any]) -> Any:
        """``INSERT`` of a breaker state row that does nothing if the name exists."""
        raise NotImplementedError


class PostgresDialect(Dialect):
    name = "postgresql"

    async def alerts_claim(self, session: AsyncSession, params: dict[str, Any]) -> list[Any]:
        # One statement: lock, lease and return, with the previous lease for reclaims.
        return list((await session.execute(_CLAIM_PG, params)).all())

    async def alerts_enqueue(
        self, session: AsyncSession, values: dict[str, Any], notify: bool
    ) -> CostSimAlertQueueModel:
        params = {
            "e_payload": values["payload"],
            "e_type": values["alert_type"],
            "e_cb": values["circuit_breaker_name"],
            "e_incident": values["incident_id"],
            "e_fp": values["fingerprint"],
            "e_max": values["max_attempts"],
            "e_now": values["created_at"],
        }
        result = (await session.execute(_ENQUEUE_PG[notify], params)).one()
        row = Q(**{c.key: result._mapping[c] for c in Q.__table__.c})
        # As though loaded by a query: persistent in this session, nothing left to flush.
        make_transient_to_detached(row)
        session.add(row)
        return row

    async def alerts_notify(self, session: AsyncSession) -> None:
        await session.execute(_NOTIFY)

    def states_insert_ignore(self, values: dict[str, Any]) -> Any:
        return pg_insert(State).values(**values).on_conflict_do_nothing(index_elements=["name"])


class SqliteDialect(Dialect):
    name = "sqlite"

    async def alerts_claim(self, session: AsyncSession, params: dict[str, Any]) -> list[Any]:
        # SQLite cannot return a joined column; its writers are serialised (BEGIN
        # IMMEDIATE), so reading the candidates first is just as safe.
        found = (await session.execute(_CLAIM_SQLITE_CANDIDATES, params)).all()
        previous = {r[0]: r[1] for r in found}
        if not previous:
            return []
        result = await session.execute(_CLAIM_SQLITE, {**params, "c_ids": list(previous)})
        return [(*r, previous[r[0]]) for r in result.all()]

    async def alerts_enqueue(
        self, session: AsyncSession, values: dict[str, Any], notify: bool
    ) -> CostSimAlertQueueModel:
        row = (await session.scalars(insert(Q).values(**values).returning(Q))).one()
        params = {"fingerprints": [values["fingerprint"]], "now": values["created_at"]}
        await session.execute(SUPERSEDE_OLDER, params)
        return row

    async def alerts_notify(self, session: AsyncSession) -> None:
        return None  # No LISTEN/NOTIFY: SQLite workers poll.

    def states_insert_ignore(self, values: dict[str, Any]) -> Any:
        return sqlite_insert(State).values(**values).on_conflict_do_nothing(index_elements=["name"])


_DIALECTS: dict[str, Dialect] = {d.name: d for d in (PostgresDialect(), SqliteDialect())}


def dialect_for(session: AsyncSession) -> Dialect:
    """The :class:`Dialect` of the database ``session`` is bound to."""
    name = session.get_bind().dialect.name
    try:
        return _DIALECTS[name]
    except KeyError:
        raise ValueError(f"unsupported database dialect: {name}") from None
