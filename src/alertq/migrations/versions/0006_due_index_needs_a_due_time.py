"""The due index serves only queries that bound the due time.

Both partial indexes of the queue cover pending rows. On statistics taken while the queue
kept up (hardly a pending row), PostgreSQL found walking every pending row of the due
index as cheap as probing the pending-fingerprint index, so after a burst (an outage)
every supersede probe (each enqueue, each relay body) read the whole backlog: a 256-alert
relay body took 2 ms on an empty backlog and 45 ms at 10,000 pending rows. With
``next_attempt_at IS NOT NULL`` in its predicate, the due index can only serve a query
that compares ``next_attempt_at`` (the claim and the seed's ``fetch_pending_alerts`` do);
a fingerprint probe then has only its own index. The column is NOT NULL, so the index
holds the same rows. PostgreSQL only: SQLite's claim would lose the index (its planner does
not infer the new term from the claim's comparison), and SQLite, without statistics,
already prefers the fingerprint index's equality for these probes.

Revision ID: 0006_due_index_needs_a_due_time
Revises: 0005_queue_write_indexes
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_due_index_needs_a_due_time"
down_revision = "0005_queue_write_indexes"
branch_labels = None
depends_on = None

TABLE = "costsim_alert_queue"
INDEX = "ix_costsim_alert_queue_due"
DUE = sa.text("status = 'pending' AND next_attempt_at IS NOT NULL")
PENDING = sa.text("status = 'pending'")


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.drop_index(INDEX, TABLE)
    op.create_index(INDEX, TABLE, ["next_attempt_at", "id"], postgresql_where=DUE)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.drop_index(INDEX, TABLE)
    op.create_index(INDEX, TABLE, ["next_attempt_at", "id"], postgresql_where=PENDING)
