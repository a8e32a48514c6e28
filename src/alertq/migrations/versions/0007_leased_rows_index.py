"""An index of the leased rows alone, for the claim's in-flight lookup.

The claim reads the fingerprints in flight (leased, lease not over) before it picks. It
found them in the due index's future range, where the retries waiting out their backoff
after an Alertmanager outage are too: every claim read the whole backlog, 3.8 times the
claim's CPU at 100,000 rows waiting (``bench/claim_backlog.py``). This index holds only
rows while they are leased: the claim's new row version enters it, the record's (which
clears ``leased_until``) does not. PostgreSQL only: SQLite's claim probes the
pending-fingerprint index per candidate instead.

Revision ID: 0007_leased_rows_index
Revises: 0006_due_index_needs_a_due_time
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_leased_rows_index"
down_revision = "0006_due_index_needs_a_due_time"
branch_labels = None
depends_on = None

TABLE = "costsim_alert_queue"
INDEX = "ix_costsim_alert_queue_leased"
LEASED = sa.text("status = 'pending' AND leased_until IS NOT NULL")


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.create_index(INDEX, TABLE, ["leased_until"], postgresql_where=LEASED)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.drop_index(INDEX, TABLE)
