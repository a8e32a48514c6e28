"""Managed alerts and heartbeats: alerts alertq keeps true for any producer.

The circuit breaker's open incidents become managed alerts here, so keep-alive goes on
re-sending them after an in-place upgrade (keep-alive now reads only managed alerts).

Revision ID: 0003_managed_alerts
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0003_managed_alerts"
down_revision = "0002"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
TS = sa.DateTime(timezone=True)
BIGID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "alertq_managed_alerts",
        sa.Column("id", BIGID, primary_key=True, autoincrement=True),
        sa.Column("fingerprint", sa.Text(), nullable=False),
        sa.Column("labels", JSON, nullable=False),
        sa.Column("annotations", JSON, nullable=False, server_default=sa.text("'{}'")),
        sa.Column("generator_url", sa.Text()),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("starts_at", TS, nullable=False),
        sa.Column("resolved_at", TS),
        sa.Column("expires_at", TS),
        sa.Column("last_sent_at", TS),
        sa.Column("keepalive_at", TS),
        sa.Column("firing_row_id", sa.BigInteger()),
        sa.Column("resolving_row_id", sa.BigInteger()),
        sa.Column("firing_type", sa.Text(), nullable=False),
        sa.Column("resolving_type", sa.Text(), nullable=False),
        sa.Column("circuit_breaker_name", sa.Text()),
        sa.Column("incident_id", sa.Text()),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="alertq_managed_alerts_pkey"),
        sa.UniqueConstraint("fingerprint", name="uq_alertq_managed_alerts_fingerprint"),
    )
    op.create_index(
        "ix_alertq_managed_alerts_keepalive_at",
        "alertq_managed_alerts",
        ["keepalive_at"],
        postgresql_where=sa.text("keepalive_at IS NOT NULL"),
        sqlite_where=sa.text("keepalive_at IS NOT NULL"),
    )
    op.create_index("ix_alertq_managed_alerts_state", "alertq_managed_alerts", ["state"])
    op.create_table(
        "alertq_heartbeats",
        sa.Column("id", BIGID, primary_key=True, autoincrement=True),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("window_seconds", sa.Float(), nullable=False),
        sa.Column("labels", JSON, nullable=False, server_default=sa.text("'{}'")),
        sa.Column("missing_fingerprint", sa.Text()),
        sa.Column("last_ping_at", TS, nullable=False),
        sa.Column("deadline", TS, nullable=False),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="alertq_heartbeats_pkey"),
        sa.UniqueConstraint("name", name="uq_alertq_heartbeats_name"),
    )
    op.create_index(
        "ix_alertq_heartbeats_deadline",
        "alertq_heartbeats",
        ["deadline"],
        postgresql_where=sa.text("state = 'ok'"),
        sqlite_where=sa.text("state = 'ok'"),
    )
    _adopt_open_incidents()


def _aware(value: Any) -> datetime:
    moment: datetime = datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _adopt_open_incidents() -> None:
    """One managed alert per open incident, from its newest firing (``disable``) row, due
    for keep-alive at once. Incidents without such a row have nothing to keep alive."""
    bind = op.get_bind()
    rows = bind.execute(
        sa.text(
            """
            SELECT q.id, q.payload, q.fingerprint, i.id, i.circuit_breaker_name, i.timestamp
              FROM costsim_cb_incidents i
              JOIN costsim_alert_queue q ON q.incident_id = i.id AND q.alert_type = 'disable'
             WHERE NOT i.resolved AND q.fingerprint IS NOT NULL
               AND q.id = (SELECT max(q2.id) FROM costsim_alert_queue q2
                            WHERE q2.incident_id = i.id AND q2.alert_type = 'disable')
            """
        )
    ).all()
    sqlite = bind.dialect.name == "sqlite"

    def ts(value: Any) -> datetime:
        moment = _aware(value).astimezone(UTC)
        return moment.replace(tzinfo=None) if sqlite else moment  # as the models store it

    now = datetime.now(UTC)
    plain = (
        "fingerprint", "state", "firing_row_id", "firing_type", "resolving_type",
        "circuit_breaker_name", "incident_id", "generator_url",
    )  # fmt: skip
    table = sa.table(
        "alertq_managed_alerts",
        *(sa.column(name) for name in plain),
        *(sa.column(name, JSON) for name in ("labels", "annotations")),
        *(
            sa.column(name, TS)
            for name in ("starts_at", "keepalive_at", "created_at", "updated_at")
        ),
    )
    for row_id, payload, fingerprint, incident_id, name, started in rows:
        alerts = json.loads(payload) if isinstance(payload, str) else payload
        if not isinstance(alerts, list) or len(alerts) != 1:
            continue  # not a single alert: not something alertq's breaker wrote
        alert = alerts[0]
        bind.execute(
            table.insert().values(
                fingerprint=fingerprint,
                labels=alert.get("labels", {}),
                annotations=alert.get("annotations", {}),
                generator_url=alert.get("generatorURL"),
                state="firing",
                starts_at=ts(started),
                keepalive_at=ts(started),  # in the past: due on the first pass
                firing_row_id=row_id,
                firing_type="disable",
                resolving_type="enable",
                circuit_breaker_name=name,
                incident_id=incident_id,
                created_at=ts(now),
                updated_at=ts(now),
            )
        )


def downgrade() -> None:
    op.drop_index("ix_alertq_heartbeats_deadline", "alertq_heartbeats")
    op.drop_table("alertq_heartbeats")
    op.drop_index("ix_alertq_managed_alerts_state", "alertq_managed_alerts")
    op.drop_index("ix_alertq_managed_alerts_keepalive_at", "alertq_managed_alerts")
    op.drop_table("alertq_managed_alerts")
