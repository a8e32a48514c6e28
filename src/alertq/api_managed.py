"""Ops API routes for managed alerts and heartbeats, included by :mod:`alertq.api` with
one line (``app.include_router(managed_router(...))``).

Mutations need the API token, like every mutation; listings are open, like the others.
A label or annotation that breaks a rule gets a 422 naming the field and the rule.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from alertq import limits
from alertq.alerts import FINGERPRINT_PATTERN, InvalidAlertPayload
from alertq.config import parse_duration
from alertq.managed import (
    HeartbeatView,
    ManagedAlerts,
    ManagedAlertView,
    Outcome,
    OwnedByAlertq,
    UnknownCursor,
)
from alertq.opsview import OpsContext

__all__ = ["managed_router"]

log = logging.getLogger("alertq.api")

MAX_PAIRS = 64
HEARTBEAT_NAME_PATTERN = limits.NAME_PATTERN  # the service checks the same (managed.py)
NAME_PATTERN = r"^[a-zA-Z_][a-zA-Z0-9_]{0,199}$"
# The schema states every rule the service checks, and pydantic enforces exactly it (so
# clients and schemathesis know them); the service still checks them all itself.
LabelName = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
LabelValue = Annotated[str, StringConstraints(min_length=1, max_length=1000, pattern=r"^[^\x00]+$")]
NoteValue = Annotated[str, StringConstraints(max_length=4000, pattern=r"^[^\x00]*$")]
RESERVED = ("alertname", "heartbeat")


def _needs_alertname(labels: dict[str, str]) -> dict[str, str]:
    if "alertname" not in labels:
        raise ValueError("labels must include alertname")
    return labels


def _not_reserved(labels: dict[str, str]) -> dict[str, str]:
    for name in RESERVED:
        if name in labels:
            raise ValueError(f"{name} is set by alertq for heartbeats")
    return labels


Labels = Annotated[
    dict[LabelName, LabelValue],
    Field(
        max_length=MAX_PAIRS,
        json_schema_extra={"required": ["alertname"], "propertyNames": {"pattern": NAME_PATTERN}},
        examples=[{"alertname": "DiskFull", "host": "db1"}],
    ),
    AfterValidator(_needs_alertname),
]
Annotations = Annotated[
    dict[LabelName, NoteValue],
    Field(max_length=MAX_PAIRS, json_schema_extra={"propertyNames": {"pattern": NAME_PATTERN}}),
]
HeartbeatLabels = Annotated[
    dict[LabelName, LabelValue],
    Field(
        max_length=MAX_PAIRS,
        description="Extra labels of its HeartbeatMissing alert (not alertname or heartbeat).",
        json_schema_extra={
            "propertyNames": {"pattern": r"^(?!alertname$|heartbeat$)[a-zA-Z_][a-zA-Z0-9_]{0,199}$"}
        },
    ),
    AfterValidator(_not_reserved),
]
DURATION_PATTERN = r"^[1-9][0-9]{0,2}[smhd]?$"
Duration = Annotated[
    str,
    StringConstraints(pattern=DURATION_PATTERN),
    Field(description="A whole number (1-999) and a unit s, m, h or d, e.g. 90s, 2h, 26h, 30d."),
]
GeneratorUrl = Annotated[
    str,
    StringConstraints(
        max_length=2048,
        # A subset of alerts.py's rule, so the schema never promises what it refuses: an
        # http(s) URL with a plain host, or a path starting with one "/"; "%" only escapes.
        pattern=(
            r"^(?:https?://[A-Za-z0-9._~-]+(?::[0-9]{1,4})?(?:[/?](?:[!-$&-~]|%[0-9A-Fa-f]{2})*)?"
            r"|/(?:(?:[!-$&-.0-\[\]-~]|%[0-9A-Fa-f]{2})(?:[!-$&-~]|%[0-9A-Fa-f]{2})*)?)$"
        ),
    ),
    Field(description="An http(s) URL or a path back to the source of the alert."),
]


class FireRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    labels: Labels
    annotations: Annotations | None = None
    expires_in: Duration | None = Field(None, description="Resolve by itself after this long.")
    generator_url: GeneratorUrl | None = None


class ResolveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    labels: Labels


class PingRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    within: Duration = Field(description="The next ping is due within this long.")
    labels: HeartbeatLabels = {}


class ManagedAlert(BaseModel):
    fingerprint: str
    labels: dict[str, str]
    annotations: dict[str, str]
    state: str
    starts_at: datetime
    resolved_at: datetime | None
    expires_at: datetime | None
    last_sent_at: datetime | None
    next_send_at: datetime | None


class ManagedOutcome(BaseModel):
    changed: bool
    detail: str
    alert: ManagedAlert | None


class Heartbeat(BaseModel):
    name: str
    window_seconds: float
    labels: dict[str, str]
    state: str
    last_ping_at: datetime
    deadline: datetime


def _alert(view: ManagedAlertView) -> ManagedAlert:
    return ManagedAlert.model_validate(view, from_attributes=True)


def _outcome(out: Outcome) -> ManagedOutcome:
    return ManagedOutcome(
        changed=out.changed,
        detail=out.detail,
        alert=None if out.alert is None else _alert(out.alert),
    )


def _heartbeat(view: HeartbeatView) -> Heartbeat:
    return Heartbeat.model_validate(view, from_attributes=True)


def _duration(value: str, field: str) -> Any:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise HTTPException(422, f"{field}: {exc}") from None


def _refused(exc: ValueError) -> HTTPException:
    if isinstance(exc, OwnedByAlertq):
        return HTTPException(409, str(exc))
    if isinstance(exc, InvalidAlertPayload):
        return HTTPException(422, f"{exc.field or 'labels'}: {exc.rule}")
    return HTTPException(422, str(exc))


def _context(request: Request) -> OpsContext:
    context: OpsContext = request.app.state.context
    return context


Ctx = Annotated[OpsContext, Depends(_context)]


def managed_router(authorized: Any) -> APIRouter:
    """The routes; ``authorized`` is the API's token dependency (passed in, so this module
    does not import the API module that includes it)."""
    router = APIRouter(tags=["managed alerts"])
    auth_errors: dict[int | str, dict[str, Any]] = {
        400: {"description": "The body is not UTF-8 JSON."},
        401: {"description": "Missing or wrong bearer token."},
        403: {"description": "Mutations are disabled (no ALERTQ_API_TOKEN)."},
        409: {"description": "The labels are a breaker's or a heartbeat's alert (alertq's own)."},
        422: {"description": "A label or annotation breaks a rule; the detail names it."},
    }

    unknown_cursor: dict[int | str, dict[str, Any]] = {
        404: {"description": "`after` names nothing (gone since the last page)."}
    }

    def service(context: OpsContext) -> ManagedAlerts:
        return ManagedAlerts(context.settings, context.session_factory, clock=context.clock)

    @router.post(
        "/api/managed/fire",
        response_model=ManagedOutcome,
        dependencies=[authorized],
        responses=auth_errors,
    )
    async def fire(context: Ctx, body: FireRequest) -> ManagedOutcome:
        """Fire a managed alert (idempotent: firing again updates annotations, keeps the
        start). alertq keeps it firing in Alertmanager until resolved or expired."""
        expires = None if body.expires_in is None else _duration(body.expires_in, "expires_in")
        try:
            out = await service(context).fire(
                body.labels, body.annotations, expires, generator_url=body.generator_url
            )
        except ValueError as exc:
            raise _refused(exc) from None
        context.invalidate()
        return _outcome(out)

    @router.post(
        "/api/managed/resolve",
        response_model=ManagedOutcome,
        dependencies=[authorized],
        responses=auth_errors,
    )
    async def resolve(context: Ctx, body: ResolveRequest) -> ManagedOutcome:
        """Resolve a managed alert; one that is not firing is left alone
        (``changed: false``, ``detail: "not firing"``)."""
        try:
            out = await service(context).resolve(body.labels)
        except ValueError as exc:
            raise _refused(exc) from None
        context.invalidate()
        return _outcome(out)

    @router.get("/api/managed", response_model=list[ManagedAlert], responses=unknown_cursor)
    async def list_managed(
        context: Ctx,
        state: Annotated[str | None, Query(pattern="^(firing|resolved)$")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        after: Annotated[
            str | None,
            Query(
                pattern=FINGERPRINT_PATTERN,
                description="Alerts after this fingerprint: the last one of the previous page.",
            ),
        ] = None,
    ) -> list[ManagedAlert]:
        """Managed alerts, firing first, newest first: state, start, last sent, next
        keep-alive. Keyset-paginated: a full page means there may be more."""
        try:
            views = await service(context).list_alerts(state=state, limit=limit, after=after)
        except UnknownCursor as exc:
            raise HTTPException(404, str(exc)) from None
        return [_alert(v) for v in views]

    @router.post(
        "/api/heartbeats/{name}",
        response_model=Heartbeat,
        dependencies=[authorized],
        responses=auth_errors,
    )
    async def ping(
        context: Ctx,
        name: Annotated[str, Path(pattern=HEARTBEAT_NAME_PATTERN)],
        body: PingRequest,
    ) -> Heartbeat:
        """Record a ping; if none arrives within ``within``, HeartbeatMissing fires."""
        within = _duration(body.within, "within")
        try:
            hb = await service(context).heartbeat(name, within, body.labels)
        except ValueError as exc:
            raise _refused(exc) from None
        context.invalidate()
        return _heartbeat(hb)

    @router.get("/api/heartbeats", response_model=list[Heartbeat], responses=unknown_cursor)
    async def list_heartbeats(
        context: Ctx,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        after: Annotated[
            str | None,
            Query(
                pattern=HEARTBEAT_NAME_PATTERN,
                description="Heartbeats after this name: the last one of the previous page.",
            ),
        ] = None,
    ) -> list[Heartbeat]:
        """Heartbeats, missing first, then by name: last ping and deadline. Keyset-paginated:
        a full page means there may be more."""
        try:
            views = await service(context).list_heartbeats(limit, after)
        except UnknownCursor as exc:
            raise HTTPException(404, str(exc)) from None
        return [_heartbeat(v) for v in views]

    return router
