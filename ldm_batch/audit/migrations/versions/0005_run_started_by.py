"""runs: who started the run (a console author, or none for the CLI and schedules)

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("started_by", sa.String(128)))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("started_by")
