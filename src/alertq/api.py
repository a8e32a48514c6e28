"""The ops HTTP server: a JSON API under ``/api``, ``/metrics``, health probes and the
status page at ``/``.

This module is the app factory, the bearer-token dependency and the routes. The state they
read is :class:`~alertq.opsview.OpsContext`; the request and response models live in
:mod:`alertq.schemas`, the status page in :mod:`alertq.statuspage`. Everything goes through
the service layer (:mod:`alertq.ops`, :class:`~alertq.breaker.CircuitBreaker`); no SQL here.

Mutating endpoints need ``Authorization: Bearer <ALERTQ_API_TOKEN>``; with no token
configured they are disabled (403).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import reprlib
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Body, Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from sqlalchemy.exc import SQLAlchemyError
from starlette.routing import Match
from starlette.types import Scope

from alertq import limits, metrics, ops, relay
from alertq.api_managed import managed_router
from alertq.config import parse_duration
from alertq.httpguard import RequestGuard, check_bearer
from alertq.models import AlertStatus
from alertq.opsview import DatabaseUnavailable, OpsContext, describe_db_error
from alertq.schemas import (
    AlertDetail,
    AlertmanagerHealth,
    AlertPage,
    AlertSummary,
    Breaker,
    Incident,
    Liveness,
    Problem,
    PurgeRequest,
    PurgeResult,
    QueueStats,
    Readiness,
    ResetRequest,
    RetryRequest,
    RetryResult,
    TripRequest,
    summary_fields,
    to_breaker,
    to_incident,
    to_queue_stats,
)
from alertq.statuspage import render_status_page

__all__ = ["create_app", "require_token"]

log = logging.getLogger("alertq.api")

MAX_ALERT_ID = limits.MAX_ALERT_ID
ECHO_LIMIT = 200
MAX_PAGE = limits.MAX_PAGE
"""The largest ``limit`` of a list endpoint."""
MAX_CURSOR = 200
CURSOR_PATTERN = r"^[^\x00]+$"
"""Non-empty, without NUL (PostgreSQL refuses NUL in text: a 503 instead of a 422)."""
"""At most this many characters of a refused input are echoed in a 422."""
BREAKER_NAME_PATTERN = limits.NAME_PATTERN  # one rule for the CLI, API and Python API
# The status page has no script, one inline style, inline SVG, and links to this server:
# a value that escaped its escaping still could not run or send anything anywhere.
STATUS_PAGE_CSP = {
    "content-security-policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
}


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
    """Let a mutation through only with the configured bearer token.

    :class:`~alertq.httpguard.RequestGuard` already refused a wrong token before the body
    was read, for every route that depends on this; this is the same check again, so a
    route is safe even where the middleware is not installed."""
    header = f"Bearer {credentials.credentials}" if credentials is not None else None
    refused = check_bearer(context.settings, header)
    if refused is not None:
        status, detail = refused
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        raise HTTPException(status, detail, headers=headers)


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
    413: {"model": Problem, "description": "The body is over ALERTQ_MAX_REQUEST_BYTES."},
}
_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": Problem}}
_DB_DOWN: dict[int | str, dict[str, Any]] = {
    503: {"model": Problem, "description": "The database did not answer."}
}
_FRONT_DOOR: dict[int | str, dict[str, Any]] = {
    413: {"model": Problem, "description": "The body is over ALERTQ_MAX_REQUEST_BYTES."},
    414: {"model": Problem, "description": "The path and query are over 4 KiB."},
}


def create_app(context: OpsContext) -> FastAPI:
    """The ops server's ASGI application, reading and acting through ``context``."""
    app = FastAPI(
        title="alertq ops API",
        version="1",
        summary="Queue stats, retries, purges and circuit breakers of an alertq deployment.",
        responses={**_DB_DOWN, **_FRONT_DOOR},
        # Starlette's redirect to the path without its trailing slash built its Location
        # from the request's Host header: a 404 instead (the relay takes Alertmanager's
        # trailing-slash paths itself).
        redirect_slashes=False,
    )
    app.state.context = context

    @app.exception_handler(DatabaseUnavailable)
    async def _db_down(request: Request, exc: DatabaseUnavailable) -> JSONResponse:
        return JSONResponse({"detail": f"database unavailable: {exc}"}, status_code=503)

    async def _db_error(request: Request, exc: Exception) -> JSONResponse:
        # SQLAlchemy wraps driver errors; a refused or timed-out connect is a bare OSError.
        log.warning("database error on %s: %s", request.url.path, describe_db_error(exc))
        detail = f"database unavailable: {describe_db_error(exc)}"
        return JSONResponse({"detail": detail}, status_code=503)

    app.add_exception_handler(SQLAlchemyError, _db_error)
    app.add_exception_handler(OSError, _db_error)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [_printable_error(e) for e in exc.errors()]
        return JSONResponse({"detail": jsonable_encoder(errors)}, status_code=422)

    # The relay's intake first: the busiest route, matched before any other.
    app.router.routes[:0] = relay.intake_routes
    _routes(app)
    app.include_router(relay.router)
    app.add_middleware(
        RequestGuard, settings=lambda: _context_of(app).settings, needs_token=_needs_token(app)
    )
    app.include_router(managed_router(Authorized))  # managed alerts, heartbeats
    return app


def _context_of(app: FastAPI) -> OpsContext:
    context: OpsContext = app.state.context
    return context


def _needs_token(app: FastAPI) -> Callable[[Scope], bool]:
    """Whether a request goes to a route that depends on :func:`require_token` (directly
    or through its router), read from the routes themselves, so routes added later are
    covered too."""

    def guarded(route: APIRoute) -> bool:
        pending = list(route.dependant.dependencies)
        while pending:
            dep = pending.pop()
            if dep.call is require_token:
                return True
            pending.extend(dep.dependencies)
        return False

    def check(scope: Scope) -> bool:
        for route in app.router.routes:
            match, _ = route.matches(scope)
            if match is Match.FULL:
                return isinstance(route, APIRoute) and guarded(route)
        return False

    return check


def _routes(app: FastAPI) -> None:
    @app.get("/api/stats", response_model=QueueStats, tags=["queue"])
    async def get_stats(context: Ctx) -> QueueStats:
        """Rows by status and the oldest due row's age (cached ``stats_cache_seconds``)."""
        return to_queue_stats(await context.snapshot(), context.clock())

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
        items = [AlertSummary(**summary_fields(r)) for r in rows[:limit]]
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
        return AlertDetail(**summary_fields(row), payload=list(row.payload or []))

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
    async def list_breakers(
        context: Ctx,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
        after: Annotated[
            str | None,
            Query(
                max_length=MAX_CURSOR,
                pattern=CURSOR_PATTERN,
                description="Breakers after this name: the last one of the previous page.",
            ),
        ] = None,
    ) -> list[Breaker]:
        """Circuit breakers by name, keyset-paginated: a full page means there may be more."""
        now = context.clock()
        return [to_breaker(s, now) for s in await context.breaker.list_states(after, limit)]

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
        return to_breaker(state, context.clock())

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
        return to_breaker(state, context.clock())

    @app.get("/api/incidents", response_model=list[Incident], tags=["breakers"])
    async def list_incidents(
        context: Ctx,
        breaker: Annotated[
            str | None, Query(pattern=BREAKER_NAME_PATTERN, description="Only this breaker.")
        ] = None,
        include_resolved: bool = False,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
        before: Annotated[
            str | None,
            Query(
                max_length=MAX_CURSOR,
                pattern=CURSOR_PATTERN,
                description="Incidents listed after this id: the last one of the previous page.",
            ),
        ] = None,
    ) -> list[Incident]:
        """Incidents newest first: open ones, or all with ``include_resolved``;
        keyset-paginated, a full page means there may be more."""
        views = await context.breaker.list_incidents(breaker, include_resolved, limit, before)
        return [to_incident(v) for v in views]

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
        """Ready when the database answers (asked now, within a few seconds) and at least
        one Alertmanager is ready."""
        reasons = []
        database = "ok"
        problem = await context.check_database()
        if problem is not None:
            database = f"unavailable: {problem}"
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
        return HTMLResponse(await render_status_page(context), headers=STATUS_PAGE_CSP)


_ECHO = reprlib.Repr()
_ECHO.maxlevel, _ECHO.maxstring, _ECHO.maxother = 3, ECHO_LIMIT, ECHO_LIMIT


def _printable_error(error: Any) -> Any:
    """A validation error that renders as UTF-8 JSON whatever the client sent.

    FastAPI's own handler echoes the offending ``input`` as it is: bytes that are not
    UTF-8, a lone surrogate, NaN, or a value hundreds of levels deep each turned the 422
    into a 500, and a megabyte body was echoed whole. Here the echo is short and printable,
    and so is everything else in the error.
    """
    if not isinstance(error, dict):
        return _echo(error, ECHO_LIMIT)
    out = {str(k): _echo(v, 2000) for k, v in error.items() if k not in ("input", "loc", "ctx")}
    if "loc" in error:
        out["loc"] = [_echo(part, ECHO_LIMIT) for part in error["loc"]]
    if "input" in error:
        out["input"] = _echo(error["input"], ECHO_LIMIT)
    if isinstance(error.get("ctx"), dict):
        out["ctx"] = {str(k): _echo(v, 2000) for k, v in error["ctx"].items()}
    return out


def _echo(value: Any, limit: int) -> Any:
    """A JSON scalar as it is; anything else as text of at most ``limit`` characters,
    without lone surrogates."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int) and abs(value) < 2**63:
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    if isinstance(value, dict | list):
        # Kept as JSON when it is short and strictly encodable.
        with contextlib.suppress(ValueError, TypeError, RecursionError):
            if len(json.dumps(value, ensure_ascii=False, allow_nan=False).encode()) <= limit:
                return value
    if isinstance(value, bytes | bytearray):
        value = bytes(value[: limit * 4]).decode("utf-8", "replace")
    text = value if isinstance(value, str) else _ECHO.repr(value)
    if len(text) > limit:
        text = text[:limit] + "…"
    return text.encode("utf-8", "replace").decode("utf-8")


def _actor(request: Request) -> str:
    """``api@<client address>``: the peer, or what a trusted proxy forwarded (resolved by
    :class:`~alertq.httpguard.RequestGuard`, which accepts only IP addresses)."""
    client = request.client.host if request.client is not None else "unknown"
    return f"api@{client}"
