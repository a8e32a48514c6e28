"""The three tables, with the legacy names and columns kept, and the columns alertq adds.

One set of models serves SQLite and PostgreSQL: JSON becomes JSONB on PostgreSQL, and every
timestamp goes in and comes out as an aware UTC ``datetime`` on both.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    Float,
    Index,
    Integer,
    MetaData,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

Clock = Callable[[], datetime]
"""Where a component reads the time; tests inject a fake one."""


def utcnow() -> datetime:
    """Now, as an aware UTC datetime: every default clock and column default."""
    return datetime.now(UTC)


class AlertStatus(StrEnum):
    """Where a queue row is in its life. ``pending`` rows may be leased (see ``leased_until``)."""

    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"
    SUPERSEDED = "superseded"


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that is always an aware UTC datetime in Python.

    Naive datetimes are refused on the way in (they are ambiguous); SQLite's naive values
    are read back as UTC.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: pass an aware UTC datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


JSONType = JSON().with_variant(JSONB(), "postgresql")

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "pk": "%(table_name)s_pkey",
    }
)

# SQLite only auto-increments INTEGER PRIMARY KEY, not BIGINT.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = metadata
    type_annotation_map = {datetime: UTCDateTime()}  # noqa: RUF012


class CostSimAlertQueueModel(Base):
    """One Alertmanager payload (a list of alerts) waiting for, or done with, delivery."""

    __tablename__ = "costsim_alert_queue"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    payload: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, nullable=False)
    alert_type: Mapped[str | None] = mapped_column(Text)
    circuit_breaker_name: Mapped[str | None] = mapped_column(Text)
    incident_id: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0, server_default="0")
    max_attempts: Mapped[int] = mapped_column(
        Integer, nullable=False, default=10, server_default="10"
    )
    last_attempt_at: Mapped[datetime | None]
    next_attempt_at: Mapped[datetime] = mapped_column(
        nullable=False, default=utcnow, server_default=func.now()
    )
    last_error: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(
        Text, nullable=False, default=AlertStatus.PENDING.value, server_default="pending"
    )
    created_at: Mapped[datetime] = mapped_column(
        nullable=False, default=utcnow, server_default=func.now()
    )

    # Added by alertq.
    sent_at: Mapped[datetime | None]
    fingerprint: Mapped[str | None] = mapped_column(Text)
    """Identity of the payload's label set(s): rows with the same one are delivered in order."""
    leased_until: Mapped[datetime | None]
    """Set while a worker holds the row; ``next_attempt_at`` equals it, so expiry makes it due."""
    lease_token: Mapped[int] = mapped_column(
        BigInteger, nullable=False, default=0, server_default="0"
    )
    """Fencing token, bumped by every claim: an outcome is recorded only with the current one."""
    leased_by: Mapped[str | None] = mapped_column(Text)
    delivered_to: Mapped[list[str]] = mapped_column(
        JSONType, nullable=False, default=list, server_default=text("'[]'")
    )
    """Alertmanager targets that have accepted this row, so a retry skips them."""
    # Added by the relay (migration 0004).
    source_addr: Mapped[str | None] = mapped_column(Text)
    """The sender's address, for rows that came in through ``POST /api/v2/alerts``."""
    source_agent: Mapped[str | None] = mapped_column(Text)
    """The sender's ``User-Agent`` (at most 200 characters)."""

    # Every claim and record writes an entry in each index a row is in (migration 0005):
    # only the partial ones the queries need.
    __table_args__ = (
        # On PostgreSQL only for queries that bound the due time (migration 0006): a
        # fingerprint probe must not find walking the whole backlog as cheap as its index.
        Index(
            "ix_costsim_alert_queue_due",
            "next_attempt_at",
            "id",
            postgresql_where=text("status = 'pending' AND next_attempt_at IS NOT NULL"),
            sqlite_where=text("status = 'pending'"),
        ),
        # The claim's in-flight lookup (migration 0007): rows enter it while leased.
        # PostgreSQL only: SQLite's claim probes the fingerprint index per candidate.
        Index(
            "ix_costsim_alert_queue_leased",
            "leased_until",
            postgresql_where=text("status = 'pending' AND leased_until IS NOT NULL"),
        ).ddl_if(dialect="postgresql"),
        Index(
            "ix_costsim_alert_queue_pending_fingerprint",
            "fingerprint",
            postgresql_where=text("status = 'pending'"),
            sqlite_where=text("status = 'pending'"),
        ),
        Index(
            "ix_costsim_alert_queue_incident_id",
            "incident_id",
            postgresql_where=text("incident_id IS NOT NULL"),
            sqlite_where=text("incident_id IS NOT NULL"),
        ),
        Index(
            "ix_costsim_alert_queue_failed",
            "id",
            postgresql_where=text("status = 'failed'"),
            sqlite_where=text("status = 'failed'"),
        ),
    )


class CostSimCBIncidentModel(Base):
    """One trip of a circuit breaker, from trip to resolution."""

    __tablename__ = "costsim_cb_incidents"

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    circuit_breaker_name: Mapped[str] = mapped_column(Text, nullable=False, index=True)
    timestamp: Mapped[datetime] = mapped_column(
        nullable=False, default=utcnow, server_default=func.now(), index=True
    )
    reason: Mapped[str] = mapped_column(Text, nullable=False)
    severity: Mapped[str] = mapped_column(Text, nullable=False)
    drift_score: Mapped[float | None] = mapped_column(Float)
    sample_count: Mapped[int | None] = mapped_column(Integer)
    details_json: Mapped[str | None] = mapped_column(Text)
    resolved: Mapped[bool] = mapped_column(
        Boolean, nullable=False, default=False, server_default=text("false"), index=True
    )
    resolved_at: Mapped[datetime | None]
    resolved_by: Mapped[str | None] = mapped_column(Text)
    resolution_notes: Mapped[str | None] = mapped_column(Text)
    alert_sent: Mapped[bool] = mapped_column(
        Boolean, nullable=False, default=False, server_default=text("false")
    )
    alert_sent_at: Mapped[datetime | None]
    alert_response: Mapped[str | None] = mapped_column(Text)


class CostSimCBStateModel(Base):
    """The current state of one named circuit breaker."""

    __tablename__ = "costsim_cb_state"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(Text, nullable=False, unique=True, index=True)
    disabled: Mapped[bool] = mapped_column(
        Boolean, nullable=False, default=False, server_default=text("false")
    )
    disabled_by: Mapped[str | None] = mapped_column(Text)
    disabled_reason: Mapped[str | None] = mapped_column(Text)
    disabled_until: Mapped[datetime | None]
    incident_id: Mapped[str | None] = mapped_column(Text)
    consecutive_failures: Mapped[int] = mapped_column(
        Integer, nullable=False, default=0, server_default="0"
    )
    last_failure_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(
        nullable=False, default=utcnow, server_default=func.now()
    )
    created_at: Mapped[datetime] = mapped_column(
        nullable=False, default=utcnow, server_default=func.now()
    )


# ---------------------------------------------------------------------------- managed alerts


class ManagedState(StrEnum):
    """A managed alert is firing until resolved (by hand, or when ``expires_at`` passes)."""

    FIRING = "firing"
    RESOLVED = "resolved"


class ManagedAlertModel(Base):
    """An alert alertq keeps true in Alertmanager, identified by its label set.

    Its queue rows (at most a firing and a resolving one) are re-armed by keep-alive;
    ``keepalive_at`` is when keep-alive next looks at it (None once it never will again:
    resolved longer ago than the retention), so a pass reads only what is due.
    """

    __tablename__ = "alertq_managed_alerts"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    fingerprint: Mapped[str] = mapped_column(Text, nullable=False, unique=True)
    labels: Mapped[dict[str, str]] = mapped_column(JSONType, nullable=False)
    annotations: Mapped[dict[str, str]] = mapped_column(
        JSONType, nullable=False, default=dict, server_default=text("'{}'")
    )
    generator_url: Mapped[str | None] = mapped_column(Text)
    state: Mapped[str] = mapped_column(Text, nullable=False)
    starts_at: Mapped[datetime] = mapped_column(nullable=False)
    resolved_at: Mapped[datetime | None]
    expires_at: Mapped[datetime | None]
    last_sent_at: Mapped[datetime | None]
    keepalive_at: Mapped[datetime | None]
    firing_row_id: Mapped[int | None] = mapped_column(BigInteger)
    resolving_row_id: Mapped[int | None] = mapped_column(BigInteger)
    firing_type: Mapped[str] = mapped_column(Text, nullable=False)
    """``alert_type`` of its firing queue row (``managed_firing``; ``disable`` for a breaker)."""
    resolving_type: Mapped[str] = mapped_column(Text, nullable=False)
    circuit_breaker_name: Mapped[str | None] = mapped_column(Text)
    incident_id: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(nullable=False)
    updated_at: Mapped[datetime] = mapped_column(nullable=False)

    __table_args__ = (
        Index(
            "ix_alertq_managed_alerts_keepalive_at",
            "keepalive_at",
            postgresql_where=text("keepalive_at IS NOT NULL"),
            sqlite_where=text("keepalive_at IS NOT NULL"),
        ),
        Index("ix_alertq_managed_alerts_state", "state"),
    )


class HeartbeatState(StrEnum):
    OK = "ok"
    MISSING = "missing"


class HeartbeatModel(Base):
    """A dead-man's switch: pinged within every ``window_seconds``, or HeartbeatMissing fires."""

    __tablename__ = "alertq_heartbeats"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(Text, nullable=False, unique=True)
    window_seconds: Mapped[float] = mapped_column(Float, nullable=False)
    labels: Mapped[dict[str, str]] = mapped_column(
        JSONType, nullable=False, default=dict, server_default=text("'{}'")
    )
    """The extra labels of its HeartbeatMissing alert (besides alertname and heartbeat)."""
    missing_fingerprint: Mapped[str | None] = mapped_column(Text)
    """The fingerprint of the HeartbeatMissing alert fired for it, until a ping resolves it."""
    last_ping_at: Mapped[datetime] = mapped_column(nullable=False)
    deadline: Mapped[datetime] = mapped_column(nullable=False)
    state: Mapped[str] = mapped_column(Text, nullable=False)
    created_at: Mapped[datetime] = mapped_column(nullable=False)

    __table_args__ = (
        Index(
            "ix_alertq_heartbeats_deadline",
            "deadline",
            postgresql_where=text("state = 'ok'"),
            sqlite_where=text("state = 'ok'"),
        ),
    )
