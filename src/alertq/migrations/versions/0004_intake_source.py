"""The relay's intake source: who sent each relayed alert (address and User-Agent).

Revision ID: 0004_intake_source
Revises: 0002 (to become 0003_managed_alerts once the managed alerts migration is merged)
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_intake_source"
down_revision = "0003_managed_alerts"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("costsim_alert_queue") as batch:
        batch.add_column(sa.Column("source_addr", sa.Text()))
        batch.add_column(sa.Column("source_agent", sa.Text()))


def downgrade() -> None:
    with op.batch_alter_table("costsim_alert_queue") as batch:
        batch.drop_column("source_agent")
        batch.drop_column("source_addr")
