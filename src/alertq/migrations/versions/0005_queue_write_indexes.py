"""Fewer index writes per queue row: every claim and record writes each index entry anew.

Drops the seed schema's two full indexes (``next_attempt_at``, ``status``), which no query
needs since the partial indexes of 0002 (the claim walks ``ix_costsim_alert_queue_due``,
stats and purge scan the table or the primary key), and keeps only rows that have an
incident in the incident index. Failed rows get a small partial index of their own, for
``retry-failed`` and the listing of failures. PostgreSQL's CPU per drained row fell by
more than half (docs/benchmarks.md, section 8).

Revision ID: 0005_queue_write_indexes
Revises: 0004_intake_source
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_queue_write_indexes"
down_revision = "0004_intake_source"
branch_labels = None
depends_on = None

TABLE = "costsim_alert_queue"
HAS_INCIDENT = sa.text("incident_id IS NOT NULL")
FAILED = sa.text("status = 'failed'")


def upgrade() -> None:
    # An adopted legacy database may lack either of the seed's indexes.
    op.drop_index("idx_costsim_alert_queue_next", TABLE, if_exists=True)
    op.drop_index("idx_costsim_alert_queue_status", TABLE, if_exists=True)
    op.drop_index("ix_costsim_alert_queue_incident_id", TABLE)
    op.create_index(
        "ix_costsim_alert_queue_incident_id",
        TABLE,
        ["incident_id"],
        postgresql_where=HAS_INCIDENT,
        sqlite_where=HAS_INCIDENT,
    )
    op.create_index(
        "ix_costsim_alert_queue_failed",
        TABLE,
        ["id"],
        postgresql_where=FAILED,
        sqlite_where=FAILED,
    )


def downgrade() -> None:
    op.drop_index("ix_costsim_alert_queue_failed", TABLE)
    op.drop_index("ix_costsim_alert_queue_incident_id", TABLE)
    op.create_index("ix_costsim_alert_queue_incident_id", TABLE, ["incident_id"])
    op.create_index("idx_costsim_alert_queue_status", TABLE, ["status"])
    op.create_index("idx_costsim_alert_queue_next", TABLE, ["next_attempt_at"])
