"""Statements built once, per dialect, and the helpers every driver module shares.

Building a statement cost more client CPU than running it on the hot path, so the hot
statements are built at import. Where PostgreSQL and SQLite need different SQL, a
:class:`Dialect` object holds both the statements and the few steps that differ; a driver
picks it once, in its constructor, and its methods never branch on the dialect.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from operator import attrgetter
from typing import Any, NamedTuple, TypeVar, overload

from sqlalchemy import (
    BigInteger,
    CursorResult,
    Integer,
    Table,
    Text,
    bindparam,
    cast,
    column,
    exists,
    func,
    insert,
    literal,
    literal_column,
    or_,
    select,
    type_coerce,
    update,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased, make_transient_to_detached

from alertq.models import AlertStatus, CostSimAlertQueueModel, CostSimCBStateModel, UTCDateTime

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


@overload
def aware(value: datetime | str) -> datetime: ...
@overload
def aware(value: datetime | str | None) -> datetime | None: ...
def aware(value: datetime | str | None) -> datetime | None:
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


def _supersede_older_statement(*, one: bool = False) -> Any:
    """Retire the older unleased pending rows of ``fingerprints`` (``fingerprint`` if
    ``one``: a statement SQLite's enqueue compiles once, see :class:`SqliteStatement`)."""
    newer = aliased(Q)
    fingerprint = (
        Q.fingerprint == bindparam("fingerprint")
        if one
        else Q.fingerprint.in_(bindparam("fingerprints", expanding=True))
    )
    return (
        update(Q)
        .where(
            Q.status == PENDING,
            fingerprint,
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


def _json_ids(name: str) -> Any:
    """The ids in the JSON array bound as ``name``: one parameter for any number of ids,
    so the statement is compiled once (SQLite's ``json_each``)."""
    return select(literal_column("value")).select_from(
        func.json_each(bindparam(name, type_=Text()))
    )


def _sqlite_claim_statements() -> tuple[Any, Any]:
    """SQLite's claim: the candidate SELECT and its leasing UPDATE, with bound parameters.

    Built once at import: building this statement cost more client CPU per claim than
    running it.
    """
    ts = Q.__table__.c.next_attempt_at.type
    now = bindparam("c_now", type_=ts)
    inflight = aliased(Q)
    # Without ANALYZE statistics SQLite picks the legacy status index and sorts every
    # pending row on each claim (200 ms at 100k pending rows, write lock held). Marking the
    # term unselective makes it walk ix_costsim_alert_queue_due in order.
    pending = func.likelihood(Q.status == PENDING, literal_column("0.9375"))
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
    # The payload as stored (JSON text), never decoded: the worker joins it into the POST.
    columns = (
        Q.id,
        type_coerce(Q.payload, Text()),
        func.json_array_length(Q.payload),
        Q.alert_type,
        Q.incident_id,
        Q.fingerprint,
        Q.attempts,
        Q.max_attempts,
        type_coerce(Q.delivered_to, Text()),
        Q.created_at,
    )
    stmt = (
        update(Q)
        .where(Q.id.in_(_json_ids("c_ids")))
        .values(**lease)
        .returning(*columns)
        .execution_options(synchronize_session=False)
    )
    return candidates, stmt


SUPERSEDE_OLDER = _supersede_older_statement()
_CLAIM_SQLITE_CANDIDATES, _CLAIM_SQLITE = _sqlite_claim_statements()
_NOTIFY = select(func.pg_notify(literal(NOTIFY_CHANNEL), literal("")))


# ---------------------------------------------------------------------------- the hot path
#
# The worker's claim and record, and the producer's enqueue, are the statements that run
# for every alert. Through SQLAlchemy's statement handling a 256-row claim cost about
# 7 ms of client CPU against 0.7 ms over asyncpg itself (docs/benchmarks.md), so on
# PostgreSQL they run as plain SQL on the session's own asyncpg connection, inside the
# session's transaction (see pg_connection). asyncpg prepares each once per connection.

PG_CLAIM = """\
WITH inflight AS MATERIALIZED (
    SELECT coalesce(jsonb_object_agg(f.fingerprint, 1), '{}') AS keys
      FROM costsim_alert_queue AS f
     WHERE f.status = $6 AND f.leased_until > $1 AND f.next_attempt_at > $1
       AND f.fingerprint IS NOT NULL),
picked AS MATERIALIZED (
    SELECT c.id, c.leased_until
      FROM costsim_alert_queue AS c
     WHERE c.status = $6 AND c.next_attempt_at <= $1
       AND (c.fingerprint IS NULL OR NOT (SELECT i.keys FROM inflight AS i) ? c.fingerprint)
     ORDER BY c.next_attempt_at, c.id
     LIMIT $2
       FOR UPDATE OF c SKIP LOCKED)
UPDATE costsim_alert_queue AS q
   SET attempts = q.attempts + 1, last_attempt_at = $1, next_attempt_at = $3,
       leased_until = $3, lease_token = $4, leased_by = $5
  FROM picked AS sub
 WHERE q.id = sub.id
RETURNING q.id, q.payload::text, jsonb_array_length(q.payload), q.alert_type, q.incident_id,
          q.fingerprint, q.attempts, q.max_attempts, q.delivered_to::text, q.created_at,
          sub.leased_until"""
"""Lease due rows: ``$1`` now, ``$2`` limit, ``$3`` lease end, ``$4`` token, ``$5`` worker,
``$6`` ``'pending'``. The status stays a parameter: PostgreSQL then keeps re-planning with
custom plans, which match the partial index (``tests/integration/test_query_plans.py`` checks it).

The fingerprints in flight are read once per claim, into a materialised CTE that holds
only leased rows: a probe of the table per candidate, planned on statistics that said "no
pending rows" (a fresh or just-drained queue), rescanned every pending row for each
candidate, and one claim over 20,000 pending rows took minutes. Now the probe's cost is
bounded by the rows in flight: the set reads the index of leased rows (migration 0007),
not the due index's future end, where every retry waiting out its backoff is too (a
claim read all of them: 3.8 times its CPU with 100,000 waiting). A leased row is never due
(the claim sets ``next_attempt_at = leased_until``), so the set never holds the candidate
itself. The set is one jsonb object keyed by fingerprint, read
once (an InitPlan), and each candidate is one key lookup (a binary search). Checked with
``NOT EXISTS`` against the CTE, PostgreSQL chose, under the ``LIMIT``, a nested loop that
compared every candidate with every row in flight: 256 × 512 comparisons per claim with two
loops busy, more than half of PostgreSQL's CPU per drained row (docs/benchmarks.md).

The candidates are a materialised CTE too, so they are chosen exactly once per statement.
As a subquery joined in the UPDATE's FROM, a generic plan (chosen after five claims on an
empty queue) rescanned it for every row of the join; each rescan locked the next rows, and
one claim leased every due row of the queue, not ``$2`` of them."""


def _pg_enqueue(notify: bool) -> str:
    """Retire the fingerprint's older unleased pending rows, insert, and maybe NOTIFY, in
    one round trip. The CTE's UPDATE runs on the statement's snapshot, which cannot see the
    new row: it retires exactly the older ones. ``'pending'`` is a literal, so a generic
    plan still matches the partial fingerprint index."""
    extra = f", pg_notify('{NOTIFY_CHANNEL}', '')" if notify else ""
    return f"""\
WITH superseded AS (
    UPDATE costsim_alert_queue
       SET status = 'superseded', last_error = $8, leased_until = NULL, leased_by = NULL
     WHERE fingerprint = $5 AND status = 'pending'
       AND (leased_until IS NULL OR leased_until <= $7)
    RETURNING id)
INSERT INTO costsim_alert_queue
    (payload, alert_type, circuit_breaker_name, incident_id, fingerprint, max_attempts,
     next_attempt_at, created_at, status, attempts, lease_token, delivered_to)
VALUES ($1::jsonb, $2, $3, $4, $5, $6, $7, $7, 'pending', 0, 0, '[]'::jsonb)
RETURNING *{extra}"""


PG_ENQUEUE = {notify: _pg_enqueue(notify) for notify in (False, True)}
"""``$1`` payload (JSON text), ``$2`` alert type, ``$3`` breaker, ``$4`` incident, ``$5``
fingerprint, ``$6`` max attempts, ``$7`` now, ``$8`` the superseded rows' last error."""

PG_RECORD = """\
UPDATE costsim_alert_queue AS q
   SET status = o.status,
       sent_at = coalesce(o.sent_at, q.sent_at),
       next_attempt_at = coalesce(o.next_attempt_at, q.next_attempt_at),
       last_error = o.last_error,
       delivered_to = coalesce(o.delivered_to::jsonb, q.delivered_to),
       leased_until = NULL, leased_by = NULL
  FROM unnest($1::bigint[], $2::text[], $3::timestamptz[], $4::timestamptz[], $5::text[],
              $6::text[]) AS o(id, status, sent_at, next_attempt_at, last_error, delivered_to)
 WHERE q.id = o.id AND q.lease_token = $7 AND q.status = 'pending'
RETURNING q.id"""
"""Every outcome of a cycle in one statement, one array element per row; fenced."""

PG_RECORD_SAME = """\
UPDATE costsim_alert_queue AS q
   SET status = $2,
       sent_at = coalesce($3, q.sent_at),
       next_attempt_at = coalesce($4, q.next_attempt_at),
       last_error = $5,
       delivered_to = coalesce($6::jsonb, q.delivered_to),
       leased_until = NULL, leased_by = NULL
 WHERE q.id = ANY($1::text::bigint[]) AND q.lease_token = $7 AND q.status = 'pending'
RETURNING q.id"""
""":data:`PG_RECORD` for a cycle whose rows all have the same outcome (a batch that was
delivered: the usual case), with the ids as one array literal. Encoding ``PG_RECORD``'s six
binary arrays cost asyncpg about 0.45 ms of client CPU per 256 rows (a Python ``isinstance``
check against an ABC per element); one text parameter costs a few µs."""

_SAME = attrgetter("status", "last_error", "sent_at", "next_attempt_at")


class Outcome(NamedTuple):
    """What to write on one leased row when its cycle is recorded (one per row: a named
    tuple, cheaper to build than a frozen dataclass)."""

    id: int
    status: str
    last_error: str | None
    delivered_to: Sequence[str] | None
    """None leaves the column as it is."""
    sent_at: datetime | None = None
    next_attempt_at: datetime | None = None
    """None leaves the column as it is."""


async def pg_connection(session: AsyncSession) -> Any:
    """The asyncpg connection under ``session``, inside the session's transaction.

    SQLAlchemy begins its transaction on the driver connection lazily, at the first
    statement it runs itself; begin it now, through SQLAlchemy's own adapter, so that the
    session's COMMIT or ROLLBACK covers what runs here.
    """
    conn = await session.connection()
    raw = await conn.get_raw_connection()
    adapter: Any = raw.dbapi_connection
    if adapter._transaction is None:
        await adapter._start_transaction()
    return raw.driver_connection


def _delivered_json(value: Sequence[str] | None, encoded: dict[tuple[str, ...], str]) -> str | None:
    if value is None:
        return None
    key = tuple(value)
    if key not in encoded:
        encoded[key] = json.dumps(list(key))
    return encoded[key]


def _same_outcome(outcomes: Sequence[Outcome]) -> bool:
    """Whether every outcome writes the same values (only the ids differ)."""
    if len(set(map(_SAME, outcomes))) != 1:
        return False
    first = outcomes[0].delivered_to
    key = None if first is None else tuple(first)
    return all(
        o.delivered_to is first or (o.delivered_to is not None and tuple(o.delivered_to) == key)
        for o in outcomes
    )


def _record_params(outcomes: Sequence[Outcome]) -> list[list[Any]]:
    encoded: dict[tuple[str, ...], str] = {}
    return [
        [o.id for o in outcomes],
        [o.status for o in outcomes],
        [o.sent_at for o in outcomes],
        [o.next_attempt_at for o in outcomes],
        [o.last_error for o in outcomes],
        [_delivered_json(o.delivered_to, encoded) for o in outcomes],
    ]


def _sqlite_record_statement() -> Any:
    """One row's outcome; run with ``executemany`` over every row of a cycle.

    On the Core table, not the ORM entity: a list of parameter sets then means a plain
    ``executemany``, not an ORM bulk update by primary key.
    """
    t: Table = Q.__table__  # type: ignore[assignment]
    ts = t.c.next_attempt_at.type
    return (
        update(t)
        .where(t.c.id == bindparam("r_id", type_=BigInteger()))
        .values(
            status=bindparam("r_status", type_=Text()),
            sent_at=func.coalesce(bindparam("r_sent_at", type_=ts), t.c.sent_at),
            next_attempt_at=func.coalesce(bindparam("r_next", type_=ts), t.c.next_attempt_at),
            last_error=bindparam("r_error", type_=Text()),
            delivered_to=func.coalesce(
                bindparam("r_delivered", type_=Text()), type_coerce(t.c.delivered_to, Text())
            ),
            leased_until=None,
            leased_by=None,
        )
    )


_RECORD_SQLITE = _sqlite_record_statement()
_RECORD_SQLITE_FENCE = (
    select(Q.id)
    .where(
        Q.id.in_(_json_ids("r_ids")),
        Q.lease_token == bindparam("r_token", type_=BigInteger()),
        Q.status == PENDING,
    )
    .order_by(Q.id)
)


def _rearm(row_id: Any, payload: Any) -> Any:
    """Re-arm sent, failed or superseded rows: each gets its new payload, due ``:now``, counted as
    enqueued anew. Not while a newer pending row has its labels (someone else's newer state
    must not be overtaken); the partial pending-fingerprint index serves that probe.

    One statement for a whole batch on both backends; only where the (id, payload) pairs
    come from differs: ``row_id`` and ``payload`` are columns of a table-valued function.
    """
    newer = aliased(Q)
    now = bindparam("now", type_=UTCDateTime())
    return (
        update(Q)
        .where(
            Q.id == row_id,
            # Literals, not parameters: a generic plan must still see the partial index.
            # coalesce (status is never NULL) keeps a status index from driving the update:
            # with the seed's (dropped in 0005) and no statistics, SQLite walked every sent
            # row and json_each for each (9x the CPU).
            func.coalesce(Q.status, literal_column("''")).in_(
                [literal_column(f"'{s}'") for s in (SENT, FAILED, SUPERSEDED)]
            ),
            ~exists().where(
                newer.fingerprint == Q.fingerprint,
                newer.id > Q.id,
                newer.status == literal_column(f"'{PENDING}'"),
            ),
        )
        # Counted as enqueued anew: attempts 0, no target has it, unleased.
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
        .returning(Q.id)
        .execution_options(synchronize_session=False)
    )


# PostgreSQL: the pairs as two arrays, unnested side by side.
_PG_ROWS = (
    func.unnest(bindparam("ids", type_=ARRAY(BigInteger)), bindparam("payloads", type_=ARRAY(Text)))
    .table_valued(column("id", BigInteger), column("payload", Text))
    .render_derived(name="v")
)
_REARM_PG = _rearm(_PG_ROWS.c.id, cast(_PG_ROWS.c.payload, JSONB))
# SQLite: the pairs as one JSON array of [id, payload], walked by json_each.
_SQLITE_ROWS = func.json_each(bindparam("rows", type_=Text)).table_valued("value").alias("v")
_REARM_SQLITE = _rearm(
    func.json_extract(_SQLITE_ROWS.c.value, "$[0]"),
    func.json_extract(_SQLITE_ROWS.c.value, "$[1]"),
)


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

    async def alerts_record(
        self, session: AsyncSession, lease_token: int, outcomes: Sequence[Outcome]
    ) -> list[int]:
        """Write every outcome on its row while the row is still leased by
        ``lease_token``; returns the ids written, ascending."""
        raise NotImplementedError

    def states_insert_ignore(self, values: dict[str, Any]) -> Any:
        """``INSERT`` of a breaker state row that does nothing if the name exists."""
        raise NotImplementedError

    def rearm_params(
        self, rows: Sequence[tuple[int, list[dict[str, Any]]]], now: datetime
    ) -> tuple[Any, dict[str, Any]]:
        """The re-arm statement (:func:`_rearm`) and its parameters for ``rows``."""
        raise NotImplementedError


class PostgresDialect(Dialect):
    name = "postgresql"

    async def alerts_claim(self, session: AsyncSession, params: dict[str, Any]) -> list[Any]:
        # One statement: lock, lease and return, with the previous lease for reclaims.
        conn = await pg_connection(session)
        return list(
            await conn.fetch(
                PG_CLAIM,
                params["c_now"],
                params["c_limit"],
                params["c_lease"],
                params["c_token"],
                params["c_worker"],
                PENDING,
            )
        )

    async def alerts_record(
        self, session: AsyncSession, lease_token: int, outcomes: Sequence[Outcome]
    ) -> list[int]:
        if not outcomes:
            return []
        conn = await pg_connection(session)
        if _same_outcome(outcomes):
            o = outcomes[0]
            rows = await conn.fetch(
                PG_RECORD_SAME,
                "{" + ",".join([str(x.id) for x in outcomes]) + "}",
                o.status,
                o.sent_at,
                o.next_attempt_at,
                o.last_error,
                _delivered_json(o.delivered_to, {}),
                lease_token,
            )
        else:
            rows = await conn.fetch(PG_RECORD, *_record_params(outcomes), lease_token)
        return sorted(r[0] for r in rows)

    async def alerts_enqueue(
        self, session: AsyncSession, values: dict[str, Any], notify: bool
    ) -> CostSimAlertQueueModel:
        conn = await pg_connection(session)
        result = await conn.fetchrow(
            PG_ENQUEUE[notify],
            json.dumps(values["payload"]),  # the connection's jsonb codec takes JSON text
            values["alert_type"],
            values["circuit_breaker_name"],
            values["incident_id"],
            values["fingerprint"],
            values["max_attempts"],
            values["created_at"],
            SUPERSEDED_REASON,
        )
        row = Q(**{c.key: result[c.name] for c in Q.__table__.c})
        # As though loaded by a query: persistent in this session, nothing left to flush.
        make_transient_to_detached(row)
        session.add(row)
        return row

    async def alerts_notify(self, session: AsyncSession) -> None:
        await session.execute(_NOTIFY)

    def states_insert_ignore(self, values: dict[str, Any]) -> Any:
        return pg_insert(State).values(**values).on_conflict_do_nothing(index_elements=["name"])

    def rearm_params(
        self, rows: Sequence[tuple[int, list[dict[str, Any]]]], now: datetime
    ) -> tuple[Any, dict[str, Any]]:
        ids = [i for i, _ in rows]
        payloads = [json.dumps(p, separators=(",", ":")) for _, p in rows]
        return _REARM_PG, {"ids": ids, "payloads": payloads, "now": now}


# SQLite's hot path. SQLAlchemy's aiosqlite adapter hands each statement to aiosqlite's
# thread four times (cursor, execute, fetch, close); each hand-off costs 0.1-0.2 ms of CPU
# on the machines measured. An enqueue transaction made ten (3.6 ms of CPU; a producer
# topped out near 100 alerts/s beside a worker, docs/benchmarks.md section 3), and a
# worker's claim and record eight each, with SQLite's one write lock held. So the enqueue,
# the claim and the record each run in one hand-off, as plain sqlite3 calls inside the
# session's transaction, on statements SQLAlchemy compiles once, with parameters and
# results converted by the columns' own SQLAlchemy types.

_SQLITE = sqlite_dialect.aiosqlite.dialect()
"""The dialect the engine uses, for compiling and converting values only."""

_UNSET = object()
_T = TypeVar("_T")


class SqliteStatement:
    """A statement compiled once for SQLite, run with sqlite3 on aiosqlite's thread."""

    def __init__(self, stmt: Any) -> None:
        compiled = stmt.compile(dialect=_SQLITE)
        self.sql: str = compiled.string
        # (name, converter, the statement's own value for a literal it bound itself)
        self._binds = [
            (
                name,
                compiled.binds[name].type.dialect_impl(_SQLITE).bind_processor(_SQLITE),
                compiled.binds[name].effective_value,
            )
            for name in compiled.positiontup or ()
        ]

    def params(self, values: Mapping[str, Any]) -> tuple[Any, ...]:
        """The positional parameters for ``values``, converted as SQLAlchemy would."""
        out = []
        for name, convert, own in self._binds:
            value = values.get(name, _UNSET)
            if value is _UNSET:
                value = own
            out.append(value if convert is None else convert(value))
        return tuple(out)

    def run(self, raw: sqlite3.Connection, values: Mapping[str, Any]) -> sqlite3.Cursor:
        """Execute on ``raw``; a failure raises SQLAlchemy's exception class for it."""
        params = self.params(values)
        try:
            return raw.execute(self.sql, params)
        except sqlite3.Error as exc:
            raise _translated(self.sql, exc) from exc

    def run_many(self, raw: sqlite3.Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        params = [self.params(r) for r in rows]
        try:
            raw.executemany(self.sql, params)
        except sqlite3.Error as exc:
            raise _translated(self.sql, exc) from exc


def _translated(sql: str, exc: sqlite3.Error) -> sa_exc.StatementError:
    # The classes callers see through SQLAlchemy (OperationalError for a busy or missing
    # database); no parameters in the message (they hold payloads).
    return sa_exc.DBAPIError.instance(sql, None, exc, sqlite3.Error, hide_parameters=True)


def _result(column: str) -> Any:
    """SQLAlchemy's conversion of a stored ``column`` value (a timestamp's text, say)."""
    type_ = Q.__table__.c[column].type.dialect_impl(_SQLITE)
    return type_.result_processor(_SQLITE, None)


_SQLITE_TIMESTAMP = _result("created_at")


async def sqlite_run(session: AsyncSession, fn: Callable[..., _T], *args: Any) -> _T:
    """``fn(raw, *args)`` on aiosqlite's thread, ``raw`` the sqlite3 connection under
    ``session``, inside the session's transaction (its ``BEGIN IMMEDIATE`` runs first if
    it has not yet): one hand-off for every statement ``fn`` runs."""
    conn = await session.connection()
    aio: Any = (await conn.get_raw_connection()).driver_connection
    try:
        result: _T = await aio._execute(fn, aio._conn, *args)
    except ValueError as exc:
        if aio._connection is not None and aio._running:
            raise  # a value a statement could not take: the caller's error
        # aiosqlite's "Connection closed": what SQLAlchemy's adapter reports as an
        # OperationalError, which the worker's outage handling recognises.
        raise _translated(fn.__name__, sqlite3.OperationalError(str(exc))) from exc
    return result


_SQLITE_ENQUEUE_COLUMNS = (
    "payload", "alert_type", "circuit_breaker_name", "incident_id", "fingerprint",
    "max_attempts", "next_attempt_at", "created_at", "status", "attempts", "lease_token",
    "delivered_to",
)  # fmt: skip
_SQLITE_INSERT = SqliteStatement(
    insert(Q).values(
        {c: bindparam(c, type_=Q.__table__.c[c].type) for c in _SQLITE_ENQUEUE_COLUMNS}
    )
)
_SQLITE_SUPERSEDE = SqliteStatement(_supersede_older_statement(one=True))
_SQLITE_CLAIM_CANDIDATES = SqliteStatement(_CLAIM_SQLITE_CANDIDATES)
_SQLITE_CLAIM = SqliteStatement(_CLAIM_SQLITE)
_SQLITE_RECORD_FENCE = SqliteStatement(_RECORD_SQLITE_FENCE)
_SQLITE_RECORD = SqliteStatement(_RECORD_SQLITE)


def _sqlite_enqueue(
    raw: sqlite3.Connection, values: Mapping[str, Any], supersede: Mapping[str, Any]
) -> int:
    """Insert, then retire the older rows of its fingerprint; returns the new row's id."""
    new_id = _SQLITE_INSERT.run(raw, values).lastrowid
    _SQLITE_SUPERSEDE.run(raw, supersede)
    assert new_id is not None
    return new_id


def _sqlite_claim(raw: sqlite3.Connection, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
    """Read the candidates, lease them; each row is the claim's columns plus the previous
    ``leased_until``. Writers are serialised (``BEGIN IMMEDIATE``), so reading first is as
    safe as SQLite's missing ``UPDATE … FROM`` with a returned joined column would be."""
    found = _SQLITE_CLAIM_CANDIDATES.run(raw, params).fetchall()
    if not found:
        return []
    previous = {r[0]: r[1] for r in found}
    ids = json.dumps(list(previous))
    leased = _SQLITE_CLAIM.run(raw, {**params, "c_ids": ids}).fetchall()
    created = _SQLITE_TIMESTAMP
    return [
        (*r[:9], created(r[9]), None if (p := previous[r[0]]) is None else created(p))
        for r in leased
    ]


def _sqlite_record(
    raw: sqlite3.Connection, fence: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]
) -> list[int]:
    """Write the outcomes of the rows still leased with the fence's token; returns their
    ids. Writers are serialised: they cannot change between this read and the write."""
    applied = [r[0] for r in _SQLITE_RECORD_FENCE.run(raw, fence).fetchall()]
    keep = set(applied)
    if keep:
        _SQLITE_RECORD.run_many(raw, [r for r in rows if r["r_id"] in keep])
    return applied


class SqliteDialect(Dialect):
    name = "sqlite"

    async def alerts_claim(self, session: AsyncSession, params: dict[str, Any]) -> list[Any]:
        return await sqlite_run(session, _sqlite_claim, params)

    async def alerts_enqueue(
        self, session: AsyncSession, values: dict[str, Any], notify: bool
    ) -> CostSimAlertQueueModel:
        full = {"lease_token": 0, **values}
        supersede = {"fingerprint": values["fingerprint"], "now": values["created_at"]}
        new_id = await sqlite_run(session, _sqlite_enqueue, full, supersede)
        # As a loaded row has them: timestamps in UTC whatever offset the caller used.
        at = {k: full[k].astimezone(UTC) for k in ("created_at", "next_attempt_at")}
        row = Q(**{**{c.key: full.get(c.key) for c in Q.__table__.c}, **at, "id": new_id})
        # As though loaded by a query: persistent in this session, nothing left to flush.
        make_transient_to_detached(row)
        session.add(row)
        return row

    async def alerts_notify(self, session: AsyncSession) -> None:
        return None  # No LISTEN/NOTIFY: SQLite workers watch PRAGMA data_version.

    async def alerts_record(
        self, session: AsyncSession, lease_token: int, outcomes: Sequence[Outcome]
    ) -> list[int]:
        if not outcomes:
            return []
        ids, statuses, sent, nxt, errors, delivered = _record_params(outcomes)
        fence = {"r_ids": json.dumps(ids), "r_token": lease_token}
        rows = [
            {
                "r_id": i,
                "r_status": st,
                "r_sent_at": se,
                "r_next": nx,
                "r_error": er,
                "r_delivered": de,
            }
            for i, st, se, nx, er, de in zip(
                ids, statuses, sent, nxt, errors, delivered, strict=True
            )
        ]
        return await sqlite_run(session, _sqlite_record, fence, rows)

    def states_insert_ignore(self, values: dict[str, Any]) -> Any:
        return sqlite_insert(State).values(**values).on_conflict_do_nothing(index_elements=["name"])

    def rearm_params(
        self, rows: Sequence[tuple[int, list[dict[str, Any]]]], now: datetime
    ) -> tuple[Any, dict[str, Any]]:
        return _REARM_SQLITE, {"rows": json.dumps(list(rows), separators=(",", ":")), "now": now}


_DIALECTS: dict[str, Dialect] = {d.name: d for d in (PostgresDialect(), SqliteDialect())}


def dialect_for(session: AsyncSession) -> Dialect:
    """The :class:`Dialect` of the database ``session`` is bound to."""
    name = session.get_bind().dialect.name
    try:
        return _DIALECTS[name]
    except KeyError:
        raise ValueError(f"unsupported database dialect: {name}") from None
