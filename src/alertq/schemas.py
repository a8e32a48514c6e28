"""The ops API's request and response models, and the converters that build them from
domain objects (queue rows, breaker states, incidents, snapshots of :mod:`alertq.opsview`).

Pydantic only: no routes, no database. The models' names and docstrings make the OpenAPI
schema, so renaming one changes the published API.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, Field, field_validator

from alertq import limits
from alertq.breaker import BreakerState, IncidentView
from alertq.models import AlertStatus, CostSimAlertQueueModel
from alertq.opsview import Snapshot, by_status, is_open

__all__ = [
    "AlertDetail",
    "AlertPage",
    "AlertSummary",
    "AlertmanagerHealth",
    "Breaker",
    "Duration",
    "Incident",
    "Liveness",
    "Problem",
    "PurgeRequest",
    "PurgeResult",
    "PurgeableStatus",
    "QueueStats",
    "Readiness",
    "ResetRequest",
    "RetryRequest",
    "RetryResult",
    "SafeText",
    "TripRequest",
    "summary_fields",
    "to_breaker",
    "to_incident",
    "to_queue_stats",
]

# The rules live in alertq.limits, shared with the CLI and the Python API.
TEXT_PATTERN = limits.TEXT_PATTERN
DURATION_PATTERN = limits.DURATION_PATTERN
DURATION_HELP = limits.DURATION_HELP


def _safe_text(value: str) -> str:
    """Refuse text no database stores (NUL), UTF-8 cannot encode (lone surrogates), or
    that says nothing (blank)."""
    return limits.check_text(value, "text")


# The pattern is in the schema (so clients and schemathesis know it); the validator
# enforces the same rule with a readable message.
SafeText = Annotated[
    str,
    Field(
        min_length=1,
        max_length=limits.MAX_TEXT_LENGTH,
        json_schema_extra={"pattern": TEXT_PATTERN},
    ),
    AfterValidator(_safe_text),
]


def _check_duration(value: str) -> str:
    limits.parse_duration(value)
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


def _not_a_bool(value: Any) -> Any:
    # JSON true is not the number 1, though pydantic's lax mode would take it (and a strict
    # int would refuse 3.0, which JSON Schema counts as an integer).
    if isinstance(value, bool):
        raise ValueError("must be a number, not true or false")
    return value


Count = Annotated[int, BeforeValidator(_not_a_bool)]


class RetryRequest(BaseModel):
    max_retries: Count = Field(
        3, ge=1, le=limits.MAX_RETRIES, description="Extra attempts to give."
    )


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


def summary_fields(row: CostSimAlertQueueModel) -> dict[str, Any]:
    """The fields of :class:`AlertSummary` for ``row`` (the status page shows them too)."""
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


def to_breaker(state: BreakerState, now: datetime) -> Breaker:
    """The API's view of a breaker; ``open`` as of ``now``."""
    return Breaker.model_validate({**asdict(state), "open": is_open(state, now)})


def to_incident(view: IncidentView) -> Incident:
    """The API's view of an incident."""
    return Incident.model_validate(view, from_attributes=True)


def to_queue_stats(snap: Snapshot, now: datetime) -> QueueStats:
    """The API's view of a snapshot's queue stats; ``age_seconds`` as of ``now``."""
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
