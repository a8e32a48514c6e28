"""The ops HTTP server: a JSON API under ``/api``, ``/metrics``, health probes and the
status page at ``/``.

Everything goes through the service layer (:mod:`alertq.ops`, :class:`CircuitBreaker`);
no SQL here. What the status page and the gauges show comes from :class:`OpsContext`: a
snapshot of queue stats, breakers and open incidents cached for ``stats_cache_seconds``
(so neither a scrape nor a page view recounts the queue), each Alertmanager's last
readiness check, and the in-process samples behind the chart. ``alertq run``
(:mod:`alertq.runner`) keeps that context fresh.

Mutating endpoints need ``Authorization: Bearer <ALERTQ_API_TOKEN>``; with no token
configured they are disabled (403).
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from itertools import pairwise
from typing import Annotated, Any

from fastapi import Body, Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from jinja2 import Environment, PackageLoader, select_autoescape
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from pydantic import AfterValidator, BaseModel, Field, field_validator
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from alertq import metrics, ops
from alertq.breaker import BreakerState, CircuitBreaker, IncidentView
from alertq.config import Settings, parse_duration
from alertq.delivery import TargetHealth, target_key
from alertq.engine import WorkerStats
from alertq.models import AlertStatus, CostSimAlertQueueModel

__all__ = [
    "DatabaseUnavailable",
    "OpsContext",
    "Sample",
    "Snapshot",
    "TargetStatus",
    "build_chart",
    "create_app",
    "render_status_page",
]

log = logging.getLogger("alertq.api")

Factory = async_sessionmaker[AsyncSession]
Clock = Callable[[], datetime]

CHART_WINDOW = timedelta(hours=1)
MIN_CHART_SPAN = timedelta(seconds=10)
MAX_SAMPLES = 3600
MAX_ALERT_ID = 2**63 - 1
OPEN_INCIDENTS_LIMIT = 10_000
FAILED_ROWS_SHOWN = 10
PAGE_REFRESH_SECONDS = 10
BREAKER_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,199}$"
SUMMARY_STATUSES = ("pending", "failed", "sent", "superseded")


def utcnow() -> datetime:
    return datetime.now(UTC)


# --------------------------------------------------------------------------- context


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One cached reading of the queue and the breakers."""

    stats: dict[str, Any]
    breakers: list[BreakerState]
    open_incidents: list[IncidentView]
    collected_at: datetime


@dataclass(slots=True)
class TargetStatus:
    """What is known of one Alertmanager: its last readiness check."""

    target: str
    ready: bool | None = None  # None: not checked yet
    error: str | None = None
    checked_at: datetime | None = None
    last_ready_at: datetime | None = None
    duration: float | None = None


@dataclass(frozen=True, slots=True)
class Sample:
    """One point of the status page's chart."""

    at: datetime
    sent_total: float
    pending: int
    failed: int


class DatabaseUnavailable(Exception):
    """The database did not answer; the message is safe to show (no credentials, no SQL)."""


def is_open(state: BreakerState, now: datetime) -> bool:
    """Open (disabled) and not past its ``disabled_until``."""
    return state.disabled and (state.disabled_until is None or state.disabled_until > now)


def by_status(stats: dict[str, Any]) -> dict[str, int]:
    """The per-status row counts of :func:`alertq.ops.queue_stats`."""
    counts = {s: 0 for s in SUMMARY_STATUSES}
    counts.update({k: v for k, v in stats.items() if isinstance(v, int) and k != "total"})
    return counts


def _describe_db_error(exc: BaseException) -> str:
    # SQLAlchemy's text carries the statement and its parameters: keep only the driver's
    # first line. Connection URLs never appear in these messages.
    cause = getattr(exc, "orig", None) or exc
    first = (str(cause).strip().splitlines() or [""])[0][:200]
    name = type(cause).__name__
    return f"{name}: {first}" if first else name


class OpsContext:
    """The state the ops server reads, kept fresh by :mod:`alertq.runner`.

    ``worker_stats`` (the in-process worker's counters) adds each target's last delivery
    error to the status page. ``clock`` is injectable for tests.
    """

    def __init__(
        self,
        settings: Settings,
        session_factory: Factory,
        *,
        breaker: CircuitBreaker | None = None,
        worker_stats: WorkerStats | None = None,
        clock: Clock = utcnow,
    ) -> None:
        self.settings = settings
        self.session_factory = session_factory
        self.breaker = breaker or CircuitBreaker(settings, session_factory)
        self.worker_stats = worker_stats
        self.clock = clock
        self.targets = [target_key(u) for u in settings.alertmanager_urls]
        self.health = {t: TargetStatus(t) for t in self.targets}
        self.samples: deque[Sample] = deque(maxlen=MAX_SAMPLES)
        self.started_at = clock()
        self._snapshot: Snapshot | None = None
        self._generation = 0
        self._lock = asyncio.Lock()

    # -- snapshot

    async def snapshot(self, max_age: float | None = None) -> Snapshot:
        """The cached snapshot if younger than ``max_age`` (default ``stats_cache_seconds``),
        else a fresh one. Concurrent callers share one refresh."""
        limit = self.settings.stats_cache_seconds if max_age is None else max_age
        current = self._snapshot
        if current is not None and self._age(current) <= limit:
            return current
        async with self._lock:
            current = self._snapshot
            if current is not None and self._age(current) <= limit:
                return current
            return await self._refresh()

    async def refresh(self) -> Snapshot:
        """Read the queue stats, breakers and open incidents now, and publish the gauges.

        Raises :class:`DatabaseUnavailable` when the database does not answer.
        """
        async with self._lock:
            return await self._refresh()

    def invalidate(self) -> None:
        """Forget the cached snapshot (after a mutation), so the next read is fresh."""
        self._snapshot = None
        self._generation += 1

    @property
    def cached(self) -> Snapshot | None:
        """The last snapshot, however old."""
        return self._snapshot

    def _age(self, snap: Snapshot) -> float:
        return (self.clock() - snap.collected_at).total_seconds()

    async def _refresh(self) -> Snapshot:
        generation = self._generation
        try:
            stats = await ops.queue_stats(self.session_factory)
            breakers = await self.breaker.list_states()
            incidents = await self.breaker.list_incidents(limit=OPEN_INCIDENTS_LIMIT)
        except (SQLAlchemyError, OSError) as exc:
            raise DatabaseUnavailable(_describe_db_error(exc)) from exc
        now = self.clock()
        metrics.set_queue_stats(by_status(stats), stats["oldest_due_age_seconds"], now.timestamp())
        metrics.set_breakers({b.name: is_open(b, now) for b in breakers}, len(incidents))
        snap = Snapshot(stats, breakers, incidents, now)
        if generation == self._generation:  # else a mutation raced this read: don't cache it
            self._snapshot = snap
        return snap

    # -- Alertmanager health and chart samples

    def record_health(self, results: Sequence[TargetHealth]) -> list[TargetStatus]:
        """Store readiness check results; returns the targets whose readiness changed."""
        now = self.clock()
        changed = []
        for result in results:
            status = self.health.setdefault(result.target, TargetStatus(result.target))
            if status.ready is not result.ready:
                changed.append(status)
            status.ready, status.error = result.ready, result.error
            status.checked_at, status.duration = now, result.duration
            if result.ready:
                status.last_ready_at = now
            metrics.set_alertmanager_up(result.target, result.ready, now.timestamp())
        return changed

    @property
    def any_ready(self) -> bool:
        return any(s.ready for s in self.health.values())

    def record_sample(self, snap: Snapshot) -> Sample:
        """Append a chart sample: the queue depth of ``snap`` and the sent-rows counter."""
        now = self.clock()
        sent = REGISTRY.get_sample_value("alertq_alerts_sent_total") or 0.0
        counts = by_status(snap.stats)
        sample = Sample(now, sent, counts["pending"], counts["failed"])
        self.samples.append(sample)
        while self.samples and now - self.samples[0].at > CHART_WINDOW:
            self.samples.popleft()
        return sample


# --------------------------------------------------------------------------- API models


TEXT_PATTERN = r"^[^\x00]*\S[^\x00]*$"
DURATION_PATTERN = r"^[1-9][0-9]{0,3}[smhdw]?$"
DURATION_HELP = "a whole number and a unit: s, m, h, d or w (e.g. 90s, 15m, 2h, 30d)"


def _safe_text(value: str) -> str:
    """Refuse text no database stores (NUL), UTF-8 cannot encode (lone surrogates), or
    that says nothing (blank)."""
    if "\x00" in value:
        raise ValueError("must not contain NUL (\\u0000)")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid UTF-8 (no lone surrogates)") from None
    if not re.fullmatch(TEXT_PATTERN, value):
        raise ValueError("must not be blank")
    return value


# The pattern is in the schema (so clients and schemathesis know it); the validator
# enforces the same rule with a readable message.
SafeText = Annotated[
    str,
    Field(min_length=1, max_length=1000, json_schema_extra={"pattern": TEXT_PATTERN}),
    AfterValidator(_safe_text),
]


def _check_duration(value: str) -> str:
    if not re.fullmatch(DURATION_PATTERN, value):
        raise ValueError(f"invalid duration {value[:40]!r}: use {DURATION_HELP}")
    return value


Duration = Annotated[
    str,
    Field(
        description=f"A duration: {DURATION_HELP}.",
        json_schema_extra={"pattern": DURATION_PATTERN},
    ),
    AfterValidator(_check_duration),
]


class PurgeableStatus(StrEnum):
    """Statuses that may be purged: every one but ``pending``."""

    SENT = AlertStatus.SENT.value
    FAILED = AlertStatus.FAILED.value
    SUPERSEDED = AlertStatus.SUPERSEDED.value


class Problem(BaseModel):
    """An error: what went wrong and what to do about it."""

    detail: str


class QueueStats(BaseModel):
    """Queue depth by status, from a snapshot at most ``stats_cache_seconds`` old."""

    pending: int
    failed: int
    sent: int
    superseded: int
    total: int
    by_status: dict[str, int]
    oldest_pending_created_at: datetime | None
    oldest_pending_due_at: datetime | None
    oldest_due_age_seconds: float = Field(description="How long the oldest due row has waited.")
    collected_at: datetime
    age_seconds: float = Field(description="How old this snapshot is.")


class AlertSummary(BaseModel):
    """A queue row without its payload."""

    id: int
    status: str
    alert_type: str | None
    circuit_breaker_name: str | None
    incident_id: str | None
    alertnames: list[str]
    alert_count: int
    attempts: int
    max_attempts: int
    created_at: datetime
    next_attempt_at: datetime
    last_attempt_at: datetime | None
    sent_at: datetime | None
    leased_until: datetime | None
    delivered_to: list[str]
    fingerprint: str | None
    last_error: str | None


class AlertDetail(AlertSummary):
    """A queue row with its payload (the alerts as they are posted)."""

    payload: list[dict[str, Any]]


class AlertPage(BaseModel):
    """Rows newest first; pass ``next_before_id`` as ``before_id`` for the next page."""

    items: list[AlertSummary]
    next_before_id: int | None


class RetryRequest(BaseModel):
    max_retries: int = Field(3, ge=1, le=1000, description="Extra attempts to give.")


class RetryResult(BaseModel):
    requeued: int


class PurgeRequest(BaseModel):
    older_than: Duration = Field(examples=["30d"])
    statuses: list[PurgeableStatus] = Field(
        default=[PurgeableStatus.SENT, PurgeableStatus.FAILED, PurgeableStatus.SUPERSEDED],
        min_length=1,
        max_length=3,
        description="Statuses to delete (pending rows are never purged).",
    )

    @field_validator("statuses", mode="before")
    @classmethod
    def _no_pending(cls, value: Any) -> Any:
        if isinstance(value, list) and AlertStatus.PENDING.value in value:
            raise ValueError("refusing to purge pending rows: they have not been delivered")
        return value


class PurgeResult(BaseModel):
    deleted: int
    cutoff: datetime


class TripRequest(BaseModel):
    reason: SafeText
    until: Duration | None = Field(
        None,
        description="Close the breaker again by itself after this long; absent: until reset.",
        examples=["2h"],
    )


class ResetRequest(BaseModel):
    reason: SafeText | None = None


class Breaker(BaseModel):
    """A circuit breaker; ``open`` means disabled (the guarded feature is off)."""

    name: str
    open: bool
    disabled: bool
    disabled_by: str | None
    disabled_reason: str | None
    disabled_until: datetime | None
    incident_id: str | None
    consecutive_failures: int
    last_failure_at: datetime | None
    updated_at: datetime


class Incident(BaseModel):
    """One trip of a breaker, from trip to resolution."""

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


class AlertmanagerHealth(BaseModel):
    target: str
    ready: bool | None
    error: str | None
    checked_at: datetime | None


class Readiness(BaseModel):
    ready: bool
    database: str
    alertmanagers: list[AlertmanagerHealth]
    reasons: list[str]


class Liveness(BaseModel):
    status: str
    started_at: datetime


def _alertnames(payload: Any) -> list[str]:
    names: list[str] = []
    for alert in payload if isinstance(payload, list) else []:
        labels = alert.get("labels") if isinstance(alert, dict) else None
        name = labels.get("alertname") if isinstance(labels, dict) else None
        if isinstance(name, str) and name not in names:
            names.append(name)
    return names


def _summary_fields(row: CostSimAlertQueueModel) -> dict[str, Any]:
    payload = row.payload
    return {
        "id": row.id,
        "status": row.status,
        "alert_type": row.alert_type,
        "circuit_breaker_name": row.circuit_breaker_name,
        "incident_id": row.incident_id,
        "alertnames": _alertnames(payload),
        "alert_count": len(payload) if isinstance(payload, list) else 0,
        "attempts": row.attempts,
        "max_attempts": row.max_attempts,
        "created_at": row.created_at,
        "next_attempt_at": row.next_attempt_at,
        "last_attempt_at": row.last_attempt_at,
        "sent_at": row.sent_at,
        "leased_until": row.leased_until,
        "delivered_to": list(row.delivered_to or []),
        "fingerprint": row.fingerprint,
        "last_error": row.last_error,
    }


def _breaker(state: BreakerState, now: datetime) -> Breaker:
    return Breaker(
        name=state.name,
        open=is_open(state, now),
        disabled=state.disabled,
        disabled_by=state.disabled_by,
        disabled_reason=state.disabled_reason,
        disabled_until=state.disabled_until,
        incident_id=state.incident_id,
        consecutive_failures=state.consecutive_failures,
        last_failure_at=state.last_failure_at,
        updated_at=state.updated_at,
    )


def _incident(view: IncidentView) -> Incident:
    return Incident(
        id=view.id,
        circuit_breaker_name=view.circuit_breaker_name,
        timestamp=view.timestamp,
        reason=view.reason,
        severity=view.severity,
        drift_score=view.drift_score,
        sample_count=view.sample_count,
        details=view.details,
        resolved=view.resolved,
        resolved_at=view.resolved_at,
        resolved_by=view.resolved_by,
        resolution_notes=view.resolution_notes,
        alert_sent=view.alert_sent,
        alert_sent_at=view.alert_sent_at,
        alert_response=view.alert_response,
    )


def _queue_stats(snap: Snapshot, now: datetime) -> QueueStats:
    counts = by_status(snap.stats)
    return QueueStats(
        pending=counts["pending"],
        failed=counts["failed"],
        sent=counts["sent"],
        superseded=counts["superseded"],
        total=snap.stats["total"],
        by_status=counts,
        oldest_pending_created_at=snap.stats.get("oldest_pending_created_at"),
        oldest_pending_due_at=snap.stats.get("oldest_pending_due_at"),
        oldest_due_age_seconds=snap.stats["oldest_due_age_seconds"],
        collected_at=snap.collected_at,
        age_seconds=max(0.0, (now - snap.collected_at).total_seconds()),
    )


# --------------------------------------------------------------------------- app


def _context(request: Request) -> OpsContext:
    context: OpsContext = request.app.state.context
    return context


Ctx = Annotated[OpsContext, Depends(_context)]
_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="ApiToken",
    description="The value of ALERTQ_API_TOKEN. Without one configured, mutations are off.",
)


async def require_token(
    context: Ctx,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Let a mutation through only with the configured bearer token."""
    token = context.settings.api_token
    if token is None:
        raise HTTPException(
            403, "mutating endpoints are disabled: set ALERTQ_API_TOKEN to enable them"
        )
    given = credentials.credentials.encode() if credentials is not None else b""
    if not secrets.compare_digest(given, token.get_secret_value().encode()):
        raise HTTPException(
            401,
            "a valid 'Authorization: Bearer <ALERTQ_API_TOKEN>' header is required",
            headers={"WWW-Authenticate": "Bearer"},
        )


Authorized = Depends(require_token)
AlertId = Annotated[int, Path(ge=1, le=MAX_ALERT_ID, description="Queue row id.")]
BreakerName = Annotated[
    str,
    Path(
        pattern=BREAKER_NAME_PATTERN,
        description="Letters, digits and _ . : @ - (at most 200).",
    ),
]
_AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": Problem, "description": "The body is not UTF-8 JSON."},
    401: {"model": Problem, "description": "Missing or wrong bearer token."},
    403: {"model": Problem, "description": "Mutations are disabled (no ALERTQ_API_TOKEN)."},
}
_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": Problem}}
_DB_DOWN: dict[int | str, dict[str, Any]] = {
    503: {"model": Problem, "description": "The database did not answer."}
}


def create_app(context: OpsContext) -> FastAPI:
    """The ops server's ASGI application, reading and acting through ``context``."""
    app = FastAPI(
        title="alertq ops API",
        version="1",
        summary="Queue stats, retries, purges and circuit breakers of an alertq deployment.",
        responses={**_DB_DOWN},
    )
    app.state.context = context

    @app.exception_handler(DatabaseUnavailable)
    async def _db_down(request: Request, exc: DatabaseUnavailable) -> JSONResponse:
        return JSONResponse({"detail": f"database unavailable: {exc}"}, status_code=503)

    async def _db_error(request: Request, exc: Exception) -> JSONResponse:
        # SQLAlchemy wraps driver errors; a refused or timed-out connect is a bare OSError.
        log.warning("database error on %s: %s", request.url.path, _describe_db_error(exc))
        detail = f"database unavailable: {_describe_db_error(exc)}"
        return JSONResponse({"detail": detail}, status_code=503)

    app.add_exception_handler(SQLAlchemyError, _db_error)
    app.add_exception_handler(OSError, _db_error)

    _routes(app)
    return app


def _routes(app: FastAPI) -> None:
    @app.get("/api/stats", response_model=QueueStats, tags=["queue"])
    async def get_stats(context: Ctx) -> QueueStats:
        """Rows by status and the oldest due row's age (cached ``stats_cache_seconds``)."""
        return _queue_stats(await context.snapshot(), context.clock())

    @app.get("/api/alerts", response_model=AlertPage, tags=["queue"])
    async def list_alerts(
        context: Ctx,
        status: Annotated[AlertStatus | None, Query(description="Only this status.")] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        before_id: Annotated[
            int | None, Query(ge=1, le=MAX_ALERT_ID, description="Rows older than this id.")
        ] = None,
    ) -> AlertPage:
        """Rows newest first, keyset-paginated."""
        rows = await ops.list_alerts(
            context.session_factory, status.value if status else None, limit + 1, before_id
        )
        items = [AlertSummary(**_summary_fields(r)) for r in rows[:limit]]
        more = len(rows) > limit
        return AlertPage(items=items, next_before_id=items[-1].id if more else None)

    @app.get(
        "/api/alerts/{alert_id:int}",
        response_model=AlertDetail,
        responses=_NOT_FOUND,
        tags=["queue"],
    )
    async def get_alert(context: Ctx, alert_id: AlertId) -> AlertDetail:
        """One row with its payload."""
        row = await ops.get_alert(context.session_factory, alert_id)
        if row is None:
            raise HTTPException(404, f"no alert with id {alert_id}")
        return AlertDetail(**_summary_fields(row), payload=list(row.payload or []))

    @app.post(
        "/api/alerts/retry-failed",
        response_model=RetryResult,
        dependencies=[Authorized],
        responses=_AUTH_ERRORS,
        tags=["queue"],
    )
    async def retry_failed(context: Ctx, body: RetryRequest) -> RetryResult:
        """Put every failed row back in the queue with ``max_retries`` more attempts."""
        count = await ops.retry_failed(context.session_factory, body.max_retries)
        context.invalidate()
        metrics.OPS_ACTIONS.labels("retry_failed").inc()
        log.info("retry-failed via API: %d rows queued again", count)
        return RetryResult(requeued=count)

    @app.post(
        "/api/alerts/{alert_id:int}/retry",
        response_model=RetryResult,
        dependencies=[Authorized],
        responses={**_AUTH_ERRORS, **_NOT_FOUND, 409: {"model": Problem}},
        tags=["queue"],
    )
    async def retry_one(
        context: Ctx,
        alert_id: AlertId,
        body: Annotated[RetryRequest | None, Body()] = None,
    ) -> RetryResult:
        """Put one failed row back in the queue."""
        max_retries = (body or RetryRequest()).max_retries
        row = await ops.get_alert(context.session_factory, alert_id)
        if row is None:
            raise HTTPException(404, f"no alert with id {alert_id}")
        if row.status != AlertStatus.FAILED.value:
            raise HTTPException(
                409, f"alert {alert_id} is {row.status}: only failed alerts can be retried"
            )
        count = await ops.retry_failed(context.session_factory, max_retries, ids=[alert_id])
        if count == 0:
            raise HTTPException(
                409,
                f"alert {alert_id} stays failed: a newer alert with the same labels replaced "
                "it, or it changed meanwhile",
            )
        context.invalidate()
        metrics.OPS_ACTIONS.labels("retry").inc()
        log.info("retry via API: row %d queued again", alert_id)
        return RetryResult(requeued=count)

    @app.post(
        "/api/alerts/purge",
        response_model=PurgeResult,
        dependencies=[Authorized],
        responses=_AUTH_ERRORS,
        tags=["queue"],
    )
    async def purge(context: Ctx, body: PurgeRequest) -> PurgeResult:
        """Delete rows of the given statuses created before ``older_than`` ago, in batches."""
        cutoff = context.clock() - parse_duration(body.older_than)
        statuses = [s.value for s in body.statuses]
        deleted = await ops.purge(context.session_factory, cutoff, statuses)
        context.invalidate()
        metrics.OPS_ACTIONS.labels("purge").inc()
        log.info("purge via API: %d rows (%s) before %s", deleted, ",".join(statuses), cutoff)
        return PurgeResult(deleted=deleted, cutoff=cutoff)

    @app.get("/api/breakers", response_model=list[Breaker], tags=["breakers"])
    async def list_breakers(context: Ctx) -> list[Breaker]:
        """Every circuit breaker, by name."""
        now = context.clock()
        return [_breaker(s, now) for s in await context.breaker.list_states()]

    @app.post(
        "/api/breakers/{name}/trip",
        response_model=Breaker,
        dependencies=[Authorized],
        responses=_AUTH_ERRORS,
        tags=["breakers"],
    )
    async def trip(context: Ctx, request: Request, name: BreakerName, body: TripRequest) -> Breaker:
        """Open the breaker (idempotent) and send its firing alert."""
        now = context.clock()
        until = now + parse_duration(body.until) if body.until else None
        try:
            state = await context.breaker.disable(name, body.reason, _actor(request), until)
        except ValueError as exc:  # e.g. a reason Alertmanager would refuse
            raise HTTPException(422, str(exc)) from exc
        context.invalidate()
        metrics.OPS_ACTIONS.labels("breaker_trip").inc()
        log.info("breaker %s tripped via API until %s: %s", name, until or "reset", body.reason)
        return _breaker(state, context.clock())

    @app.post(
        "/api/breakers/{name}/reset",
        response_model=Breaker,
        dependencies=[Authorized],
        responses={**_AUTH_ERRORS, **_NOT_FOUND},
        tags=["breakers"],
    )
    async def reset(
        context: Ctx,
        request: Request,
        name: BreakerName,
        body: Annotated[ResetRequest | None, Body()] = None,
    ) -> Breaker:
        """Close the breaker (idempotent): resolve its incident and send the resolving alert."""
        if await context.breaker.get_state(name) is None:
            raise HTTPException(404, f"no circuit breaker named {name!r}")
        reason = body.reason if body is not None else None
        try:
            state = await context.breaker.enable(name, _actor(request), reason)
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from exc
        context.invalidate()
        metrics.OPS_ACTIONS.labels("breaker_reset").inc()
        log.info("breaker %s reset via API: %s", name, reason or "no reason given")
        return _breaker(state, context.clock())

    @app.get("/api/incidents", response_model=list[Incident], tags=["breakers"])
    async def list_incidents(
        context: Ctx,
        breaker: Annotated[
            str | None, Query(pattern=BREAKER_NAME_PATTERN, description="Only this breaker.")
        ] = None,
        include_resolved: bool = False,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[Incident]:
        """Incidents newest first: open ones, or all with ``include_resolved``."""
        views = await context.breaker.list_incidents(breaker, include_resolved, limit)
        return [_incident(v) for v in views]

    @app.get("/healthz", response_model=Liveness, tags=["probes"])
    async def healthz(context: Ctx) -> Liveness:
        """The process is alive and serving."""
        return Liveness(status="ok", started_at=context.started_at)

    @app.get(
        "/readyz",
        response_model=Readiness,
        responses={503: {"model": Readiness, "description": "Not ready, with the reasons."}},
        tags=["probes"],
    )
    async def readyz(context: Ctx) -> JSONResponse:
        """Ready when the database answers and at least one Alertmanager is ready."""
        reasons = []
        database = "ok"
        try:
            await context.snapshot()
        except DatabaseUnavailable as exc:
            database = f"unavailable: {exc}"
            reasons.append(f"database {database}")
        health = list(context.health.values())
        if not context.any_ready:
            checked = [h for h in health if h.ready is not None]
            if not checked:
                reasons.append("no Alertmanager readiness check has completed yet")
            else:
                errors = "; ".join(f"{h.target}: {h.error or 'not ready'}" for h in health)
                reasons.append(f"no Alertmanager is ready ({errors})")
        body = Readiness(
            ready=not reasons,
            database=database,
            alertmanagers=[
                AlertmanagerHealth(
                    target=h.target, ready=h.ready, error=h.error, checked_at=h.checked_at
                )
                for h in health
            ],
            reasons=reasons,
        )
        return JSONResponse(body.model_dump(mode="json"), status_code=200 if body.ready else 503)

    @app.get(
        "/metrics",
        response_class=Response,
        responses={200: {"content": {"text/plain": {}}, "description": "Prometheus metrics."}},
        tags=["probes"],
    )
    async def prometheus_metrics(context: Ctx) -> Response:
        """Prometheus text format; the queue gauges come from the cached snapshot."""
        try:
            await context.snapshot()
        except DatabaseUnavailable as exc:
            log.warning("metrics served without fresh queue stats: %s", exc)
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", response_class=HTMLResponse, tags=["status page"])
    async def status_page(context: Ctx) -> HTMLResponse:
        """The status page (HTML, refreshes itself)."""
        return HTMLResponse(await render_status_page(context))


def _actor(request: Request) -> str:
    client = request.client.host if request.client is not None else "unknown"
    return f"api@{client}"


# --------------------------------------------------------------------------- status page

_templates = Environment(
    loader=PackageLoader("alertq", "templates"),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)


def human_age(seconds: float | None) -> str:
    """``"0s"``, ``"42s"``, ``"3m 12s"``, ``"2h 5m"``, ``"3d 4h"``."""
    if seconds is None:
        return "—"
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"


def _ago(when: datetime | None, now: datetime) -> str:
    return "never" if when is None else f"{human_age((now - when).total_seconds())} ago"


@dataclass(frozen=True, slots=True)
class ChartSeries:
    """One line of the chart, already in SVG coordinates (0..W × 0..H)."""

    title: str
    unit: str
    line: str
    area: str
    latest: str
    peak: str
    css: str


CHART_W, CHART_H = 600.0, 120.0


@dataclass(frozen=True, slots=True)
class Chart:
    """The status page's chart: a time axis and two series."""

    title: str
    axis: tuple[str, str, str]
    series: list[ChartSeries]


def _span_label(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.0f} h"
    if seconds >= 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:.0f} s"


def build_chart(samples: Sequence[Sample], now: datetime) -> Chart:
    """Delivery rate and queue depth over the last hour (or since the process started,
    if that is shorter), in SVG coordinates."""
    start = now - CHART_WINDOW
    points = [s for s in samples if s.at >= start]
    if points:
        start = max(start, min(points[0].at, now - MIN_CHART_SPAN))
    span = max(1.0, (now - start).total_seconds())
    rates: list[tuple[datetime, float]] = []
    for prev, cur in pairwise(points):
        dt = (cur.at - prev.at).total_seconds()
        if dt > 0:
            rates.append((cur.at, max(0.0, cur.sent_total - prev.sent_total) / dt))
    depth = [(s.at, float(s.pending)) for s in points]

    def series(title: str, unit: str, data: list[tuple[datetime, float]], css: str) -> ChartSeries:
        peak = max((v for _, v in data), default=0.0)
        top = peak * 1.15 if peak > 0 else 1.0
        coords = [
            (CHART_W * (at - start).total_seconds() / span, CHART_H - CHART_H * v / top)
            for at, v in data
        ]
        line = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
        area = ""
        if len(coords) >= 2:
            area = f"M{coords[0][0]:.1f},{CHART_H:.0f} L{line.replace(' ', ' L')} "
            area += f"L{coords[-1][0]:.1f},{CHART_H:.0f} Z"
        latest = _number(data[-1][1] if data else None, unit)
        return ChartSeries(
            title, unit, line, area, latest, _number(peak if data else None, unit), css
        )

    full = span >= CHART_WINDOW.total_seconds() - 1
    return Chart(
        title="Last hour" if full else f"Since start ({_span_label(span)})",
        axis=(f"−{_span_label(span)}", f"−{_span_label(span / 2)}", "now"),
        series=[
            series("Delivered", "/s", rates, "rate"),
            series("Pending", "rows", depth, "depth"),
        ],
    )


def _number(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    if unit == "/s":
        return f"{value:.1f}/s" if value >= 10 or value == 0 else f"{value:.2f}/s"
    return f"{int(value)}"


async def render_status_page(context: OpsContext) -> str:
    """The status page's HTML: queue, chart, Alertmanagers, breakers, failed rows."""
    now = context.clock()
    db_error: str | None = None
    snap: Snapshot | None = None
    failed_rows: list[CostSimAlertQueueModel] = []
    try:
        snap = await context.snapshot()
        failed_rows = await ops.list_alerts(
            context.session_factory, AlertStatus.FAILED.value, FAILED_ROWS_SHOWN
        )
    except DatabaseUnavailable as exc:
        db_error = str(exc)
        snap = context.cached
    except (SQLAlchemyError, OSError) as exc:
        db_error = _describe_db_error(exc)
    stats = _queue_stats(snap, now) if snap is not None else None
    delivery_errors = (
        dict(context.worker_stats.last_error_by_target) if context.worker_stats else {}
    )
    targets = [
        {
            "target": h.target,
            "ready": h.ready,
            "error": h.error,
            "delivery_error": delivery_errors.get(h.target),
            "checked": _ago(h.checked_at, now),
            "last_ready": _ago(h.last_ready_at, now),
        }
        for h in context.health.values()
    ]
    checked = [h for h in context.health.values() if h.ready is not None]
    breakers = [_breaker(b, now) for b in snap.breakers] if snap is not None else []
    template = _templates.get_template("status.html")
    return template.render(
        now=now,
        instance=context.settings.instance,
        refresh=PAGE_REFRESH_SECONDS,
        db_error=db_error,
        stats=stats,
        oldest_due=human_age(stats.oldest_due_age_seconds) if stats else "—",
        collected=_ago(stats.collected_at, now) if stats else "never",
        none_ready=bool(checked) and not context.any_ready,
        not_checked=not checked,
        targets=targets,
        breakers=breakers,
        open_breakers=sum(b.open for b in breakers),
        incidents=[_incident(i) for i in snap.open_incidents] if snap is not None else [],
        failed=[
            {**_summary_fields(r), "age": _ago(r.last_attempt_at or r.created_at, now)}
            for r in failed_rows
        ],
        chart=build_chart(list(context.samples), now),
        chart_w=int(CHART_W),
        chart_h=int(CHART_H),
        token_configured=context.settings.api_token is not None,
        ago=lambda when: _ago(when, now),
    )
