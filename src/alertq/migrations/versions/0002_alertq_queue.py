"""alertq's queue columns: send time, fingerprint, lease and fence, per-target delivery.

Adds the partial index the claim query walks, and on PostgreSQL autovacuum settings for a
table whose rows churn (every row is inserted, updated two or three times, then purged).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
TS = sa.DateTime(timezone=True)
PENDING = sa.text("status = 'pending'")

# Vacuum after ~1% of rows changed (default 20%), without throttling: dead tuples in the
# claim index's range cost every claim. Fillfactor leaves room for HOT updates.
AUTOVACUUM = (
    "autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_threshold = 1000, "
    "autovacuum_analyze_scale_factor = 0.02, autovacuum_vacuum_cost_delay = 0, "
    "fillfactor = 85"
)


def upgrade() -> None:
    with op.batch_alter_table("costsim_alert_queue") as batch:
        batch.add_column(sa.Column("sent_at", TS))
        batch.add_column(sa.Column("fingerprint", sa.Text()))
        batch.add_column(sa.Column("leased_until", TS))
        batch.add_column(
            sa.Column("lease_token", sa.BigInteger(), nullable=False, server_default="0")
        )
        batch.add_column(sa.Column("leased_by", sa.Text()))
        batch.add_column(
            sa.Column("delivered_to", JSON, nullable=False, server_default=sa.text("'[]'"))
        )
    op.create_index(
        "ix_costsim_alert_queue_due",
        "costsim_alert_queue",
        ["next_attempt_at", "id"],
        postgresql_where=PENDING,
        sqlite_where=PENDING,
    )
    op.create_index(
        "ix_costsim_alert_queue_pending_fingerprint",
        "costsim_alert_queue",
        ["fingerprint"],
        postgresql_where=PENDING,
        sqlite_where=PENDING,
    )
    op.create_index("ix_costsim_alert_queue_incident_id", "costsim_alert_queue", ["incident_id"])
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"ALTER TABLE costsim_alert_queue SET ({AUTOVACUUM})")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "ALTER TABLE costsim_alert_queue RESET (autovacuum_vacuum_scale_factor, "
            "autovacuum_vacuum_threshold, autovacuum_analyze_scale_factor, "
            "autovacuum_vacuum_cost_delay, fillfactor)"
        )
    op.drop_index("ix_costsim_alert_queue_incident_id", "costsim_alert_queue")
    op.drop_index("ix_costsim_alert_queue_pending_fingerprint", "costsim_alert_queue")
    op.drop_index("ix_costsim_alert_queue_due", "costsim_alert_queue")
    with op.batch_alter_table("costsim_alert_queue") as batch:
        for column in (
            "delivered_to",
            "leased_by",
            "lease_token",
            "leased_until",
            "fingerprint",
            "sent_at",
        ):
            batch.drop_column(column)
