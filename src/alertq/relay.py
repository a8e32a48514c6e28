"""The Alertmanager API that senders talk to: ``POST /api/v2/alerts``, ``GET
/api/v2/status``, ``GET /-/healthy`` and ``GET /-/ready``, mounted on the ops server.

Prometheus, Grafana, vmalert and amtool point at alertq instead of Alertmanager by changing
one URL. A body is parsed by :mod:`alertq.intake` exactly as Alertmanager 0.25 would, each
alert is stored as its own queue row (``alert_type="relay"``) in one transaction, and the
answer (Alertmanager's status and body) is sent only after the commit. The worker then
delivers the rows like every other alert. No SQL here: the driver's
:meth:`~alertq.driver.intake.IntakeDriver.alerts_insert_many` does it.

Intake auth (optional): ``ALERTQ_INTAKE_USERNAME``/``_PASSWORD`` (basic) or
``ALERTQ_INTAKE_BEARER_TOKEN``, what a Prometheus ``alertmanager_config`` can send, compared
in constant time. ``/-/healthy``, ``/-/ready`` and ``/api/v2/status`` stay open, as on
Alertmanager.
"""

from __future__ import annotations

import base64
import binascii
import importlib.metadata
import logging
import secrets
import time
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from sqlalchemy.exc import SQLAlchemyError
from starlette.requests import ClientDisconnect
from starlette.routing import Route

from alertq import metrics, wakeup
from alertq.config import Settings
from alertq.db import transaction
from alertq.driver.intake import IntakeDriver, IntakeRow
from alertq.intake import parse_alerts_body_async
from alertq.logs import escape_control
from alertq.opsview import OpsContext, describe_db_error

__all__ = [
    "RELAY_ALERT_TYPE",
    "intake_auth_enabled",
    "intake_auth_scheme",
    "intake_routes",
    "router",
]

log = logging.getLogger("alertq.relay")

RELAY_ALERT_TYPE = "relay"
MAX_AGENT_CHARS = 200
_JSON_TYPES = ("application/json",)

# Not in the ops API's OpenAPI schema: these routes are Alertmanager's API (its own spec,
# api/v2/openapi.yaml, describes them), with Alertmanager's answers, not alertq's.
router = APIRouter(tags=["Alertmanager API (relay)"], include_in_schema=False)


def intake_auth_scheme(settings: Settings) -> str | None:
    """The scheme ``POST /api/v2/alerts`` requires (``"Bearer"`` or ``"Basic"``), or None
    when intake auth is off. The banner and the 401 both read it."""
    if settings.intake_bearer_token is not None:
        return "Bearer"
    if settings.intake_username is not None:
        return "Basic"
    return None


def intake_auth_enabled(settings: Settings) -> bool:
    """Whether ``POST /api/v2/alerts`` requires credentials."""
    return intake_auth_scheme(settings) is not None


def _authorized(settings: Settings, header: str | None) -> bool:
    """Constant-time check of an ``Authorization`` header against the intake credentials."""
    given = header or ""
    scheme, _, value = given.partition(" ")
    if settings.intake_bearer_token is not None:
        expected = settings.intake_bearer_token.get_secret_value().encode()
        ok = scheme.lower() == "bearer"
        return secrets.compare_digest(value.strip().encode(), expected) and ok
    if settings.intake_username is not None and settings.intake_password is not None:
        try:
            decoded = base64.b64decode(value.strip(), validate=True)
        except (binascii.Error, ValueError):
            decoded = b""
        user, _, password = decoded.partition(b":")
        user_ok = secrets.compare_digest(user, settings.intake_username.encode())
        pass_ok = secrets.compare_digest(
            password, settings.intake_password.get_secret_value().encode()
        )
        return user_ok and pass_ok and scheme.lower() == "basic"
    return True


def _error(status: int, code: int, message: str) -> JSONResponse:
    return JSONResponse({"code": code, "message": message}, status_code=status)


def _source(request: Request) -> tuple[str | None, str | None]:
    addr = request.client.host if request.client is not None else None
    # ASGI headers are bytes (Starlette's str view is Latin-1): decode as UTF-8, escape
    # what could forge a line or hide text, then cap.
    raw = next((v for k, v in request.headers.raw if k == b"user-agent"), None)
    if raw is None:
        return addr, None
    agent = raw[: 4 * MAX_AGENT_CHARS].decode("utf-8", "replace")
    return addr, escape_control(agent)[:MAX_AGENT_CHARS]


async def post_alerts(request: Request) -> Response:
    """Alertmanager 0.25's answers: 200 empty; 400 ``{"code":400,...}`` for a body that
    is not JSON alerts; 422 ``{"code":6xx,...}`` for a schema error; 400 with a JSON string
    of the errors after storing the valid alerts; 415 for a non-JSON Content-Type."""
    started = time.perf_counter()
    try:
        return await _post_alerts(request)
    finally:
        metrics.INTAKE_LATENCY.observe(time.perf_counter() - started)


async def _post_alerts(request: Request) -> Response:
    context: OpsContext = request.app.state.context
    settings = context.settings
    received_at = datetime.now(UTC)
    if not _authorized(settings, request.headers.get("authorization")):
        metrics.INTAKE_ALERTS.labels("unauthorized").inc()
        scheme = "Bearer" if intake_auth_scheme(settings) == "Bearer" else 'Basic realm="alertq"'
        response = _error(401, 401, "unauthorized")
        response.headers["WWW-Authenticate"] = scheme
        return response
    media = request.headers.get("content-type", "application/octet-stream")
    if media.split(";", 1)[0].strip().lower() not in _JSON_TYPES:
        return _error(
            415,
            415,
            f'unsupported media type "{media[:100]}", only [application/json] are allowed',
        )
    try:
        raw = await request.body()
    except ClientDisconnect:
        # The sender left mid-body: nothing to store, and nobody to answer. Uncaught, it
        # logged an ERROR with a full traceback per dropped connection (an open intake
        # let anyone flood the log).
        return Response(status_code=400)
    result = await parse_alerts_body_async(
        raw, received_at=received_at, max_alerts=settings.intake_max_alerts
    )
    if result.errors:
        metrics.INTAKE_ALERTS.labels("invalid").inc(len(result.errors))
    if result.status != 200 and not result.alerts and not result.errors:
        metrics.INTAKE_ALERTS.labels("rejected").inc()
    if result.alerts:
        # The last alert of a label set wins, as it does in Alertmanager's store.
        latest: dict[str, IntakeRow] = {}
        for alert, fingerprint in zip(result.alerts, result.fingerprints, strict=True):
            latest.pop(fingerprint, None)
            latest[fingerprint] = IntakeRow([alert], fingerprint)
        addr, agent = _source(request)
        try:
            async with transaction(context.session_factory) as session:
                await IntakeDriver(session).alerts_insert_many(
                    list(latest.values()),
                    alert_type=RELAY_ALERT_TYPE,
                    now=received_at,
                    max_attempts=settings.max_attempts,
                    source_addr=addr,
                    source_agent=agent,
                )
        except (SQLAlchemyError, OSError) as exc:
            metrics.INTAKE_ALERTS.labels("error").inc(len(result.alerts))
            log.warning(
                "intake of %d alerts failed: %s", len(result.alerts), describe_db_error(exc)
            )
            # Alertmanager's 500 carries a JSON string; the sender retries (or drops) the batch.
            return Response(
                b'"alertq could not store the alerts: database unavailable"\n',
                status_code=500,
                media_type="application/json",
            )
        metrics.INTAKE_ALERTS.labels("stored").inc(len(result.alerts))
        wakeup.wake_workers()  # the worker of this process picks the alerts up at once
    if result.status == 200:
        return Response(status_code=200)
    return Response(result.body, status_code=result.status, media_type=result.content_type)


# A plain Starlette route, not a FastAPI one: no dependency solving or response model
# per request, and the app puts it first so the router and RequestGuard's token lookup
# find it at once. It still passes every middleware (RequestGuard's size limits and
# client address) and the app's exception handlers. Alertmanager's API router ignores one
# trailing slash, and so does the relay: a script that posts to ``/api/v2/alerts/`` works
# against either (the app does not redirect; a redirect's Location came from the Host header).
intake_routes = [
    Route(path, post_alerts, methods=["POST"], include_in_schema=False)
    for path in ("/api/v2/alerts", "/api/v2/alerts/")
]


def _status_body(context: OpsContext, now: datetime) -> dict[str, Any]:
    return {
        "cluster": {"status": "disabled", "peers": []},
        "versionInfo": {
            "version": f"alertq-{_version()}",
            "revision": "",
            "branch": "",
            "buildUser": "alertq",
            "buildDate": "",
            "goVersion": "none (alertq relay)",
        },
        "config": {
            "original": (
                "# alertq relay: alerts are stored durably and delivered to\n"
                + "".join(f"#   {t}\n" for t in _targets(context.settings))
                + "# alertq does not serve silences, receivers or routes.\n"
            )
        },
        "uptime": context.started_at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
    }


def _version() -> str:
    try:
        return importlib.metadata.version("alertq")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _targets(settings: Settings) -> list[str]:
    # Credential-free: a URL's user:password@ is never shown.
    return [url.rpartition("@")[2] if "@" in url else url for url in settings.alertmanager_urls]


@router.get("/api/v2/status", summary="Alertmanager's status, as amtool and Grafana read it.")
@router.get("/api/v2/status/", include_in_schema=False)
async def status(request: Request) -> JSONResponse:
    """``cluster``, ``versionInfo``, ``config.original`` and ``uptime`` (when this alertq
    started), the fields Alertmanager's schema requires."""
    context: OpsContext = request.app.state.context
    return JSONResponse(_status_body(context, datetime.now(UTC)))


@router.get("/-/healthy", response_class=PlainTextResponse)
@router.head("/-/healthy", response_class=PlainTextResponse, include_in_schema=False)
async def healthy() -> PlainTextResponse:
    """Always 200 ``OK`` while the process serves, as Alertmanager's."""
    return PlainTextResponse("OK")


@router.get("/-/ready", response_class=PlainTextResponse)
@router.head("/-/ready", response_class=PlainTextResponse, include_in_schema=False)
async def ready(request: Request) -> PlainTextResponse:
    """200 ``OK`` when alerts can be stored (the database answers within a few seconds),
    even with every Alertmanager down: queueing is the point. ``/readyz`` answers
    "delivering"."""
    context: OpsContext = request.app.state.context
    problem = await context.check_database()
    if problem is not None:
        return PlainTextResponse(f"not ready: database unavailable: {problem}", status_code=503)
    return PlainTextResponse("OK")
