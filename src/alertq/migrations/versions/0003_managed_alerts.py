"""Managed alerts and heartbeats: alerts alertq keeps true for any producer.

Revision ID: 0003_managed_alerts
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

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


def downgrade() -> None:
    op.drop_index("ix_alertq_heartbeats_deadline", "alertq_heartbeats")
    op.drop_table("alertq_heartbeats")
    op.drop_index("ix_alertq_managed_alerts_state", "alertq_managed_alerts")
    op.drop_index("ix_alertq_managed_alerts_keepalive_at", "alertq_managed_alerts")
    op.drop_table("alertq_managed_alerts")
