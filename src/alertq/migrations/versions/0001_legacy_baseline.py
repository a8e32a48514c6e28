"""The legacy schema, as the original system created it.

Creates only the tables that are missing, so running it over a legacy database adopts it
without touching a row.

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
TS = sa.DateTime(timezone=True)
ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _missing(table: str) -> bool:
    return not sa.inspect(op.get_bind()).has_table(table)


def upgrade() -> None:
    if _missing("costsim_alert_queue"):
        op.create_table(
            "costsim_alert_queue",
            sa.Column("id", ID, primary_key=True, autoincrement=True),
            sa.Column("payload", JSON, nullable=False),
            sa.Column("alert_type", sa.Text()),
            sa.Column("circuit_breaker_name", sa.Text()),
            sa.Column("incident_id", sa.Text()),
            sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
            sa.Column("max_attempts", sa.Integer(), nullable=False, server_default="10"),
            sa.Column("last_attempt_at", TS),
            sa.Column("next_attempt_at", TS, nullable=False, server_default=sa.func.now()),
            sa.Column("last_error", sa.Text()),
            sa.Column("status", sa.Text(), nullable=False, server_default="pending"),
            sa.Column("created_at", TS, nullable=False, server_default=sa.func.now()),
            sa.PrimaryKeyConstraint("id", name="costsim_alert_queue_pkey"),
        )
        op.create_index("idx_costsim_alert_queue_next", "costsim_alert_queue", ["next_attempt_at"])
        op.create_index("idx_costsim_alert_queue_status", "costsim_alert_queue", ["status"])

    if _missing("costsim_cb_incidents"):
        op.create_table(
            "costsim_cb_incidents",
            sa.Column("id", sa.Text(), primary_key=True),
            sa.Column("circuit_breaker_name", sa.Text(), nullable=False),
            sa.Column("timestamp", TS, nullable=False, server_default=sa.func.now()),
            sa.Column("reason", sa.Text(), nullable=False),
            sa.Column("severity", sa.Text(), nullable=False),
            sa.Column("drift_score", sa.Float()),
            sa.Column("sample_count", sa.Integer()),
            sa.Column("details_json", sa.Text()),
            sa.Column("resolved", sa.Boolean(), nullable=False, server_default=sa.false()),
            sa.Column("resolved_at", TS),
            sa.Column("resolved_by", sa.Text()),
            sa.Column("resolution_notes", sa.Text()),
            sa.Column("alert_sent", sa.Boolean(), nullable=False, server_default=sa.false()),
            sa.Column("alert_sent_at", TS),
            sa.Column("alert_response", sa.Text()),
            sa.PrimaryKeyConstraint("id", name="costsim_cb_incidents_pkey"),
        )
        op.create_index(
            "ix_costsim_cb_incidents_circuit_breaker_name",
            "costsim_cb_incidents",
            ["circuit_breaker_name"],
        )
        op.create_index("ix_costsim_cb_incidents_timestamp", "costsim_cb_incidents", ["timestamp"])
        op.create_index("ix_costsim_cb_incidents_resolved", "costsim_cb_incidents", ["resolved"])

    if _missing("costsim_cb_state"):
        op.create_table(
            "costsim_cb_state",
            sa.Column("id", ID, primary_key=True, autoincrement=True),
            sa.Column("name", sa.Text(), nullable=False),
            sa.Column("disabled", sa.Boolean(), nullable=False, server_default=sa.false()),
            sa.Column("disabled_by", sa.Text()),
            sa.Column("disabled_reason", sa.Text()),
            sa.Column("disabled_until", TS),
            sa.Column("incident_id", sa.Text()),
            sa.Column("consecutive_failures", sa.Integer(), nullable=False, server_default="0"),
            sa.Column("last_failure_at", TS),
            sa.Column("updated_at", TS, nullable=False, server_default=sa.func.now()),
            sa.Column("created_at", TS, nullable=False, server_default=sa.func.now()),
            sa.PrimaryKeyConstraint("id", name="costsim_cb_state_pkey"),
        )
        op.create_index("ix_costsim_cb_state_name", "costsim_cb_state", ["name"], unique=True)


def downgrade() -> None:
    op.drop_table("costsim_cb_state")
    op.drop_table("costsim_cb_incidents")
    op.drop_table("costsim_alert_queue")
