"""query columns: batch id, brand, campaign use and prompt on audit records

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("audit_records") as batch:
        batch.add_column(sa.Column("batch_id", sa.String(64)))
        batch.add_column(sa.Column("brand", sa.String(128)))
        batch.add_column(sa.Column("use", sa.String(32)))
        batch.add_column(sa.Column("prompt", sa.Text))
        batch.create_index("ix_audit_records_batch_id", ["batch_id"])
        batch.create_index("ix_audit_records_brand", ["brand"])


def downgrade() -> None:
    with op.batch_alter_table("audit_records") as batch:
        batch.drop_index("ix_audit_records_brand")
        batch.drop_index("ix_audit_records_batch_id")
        for column in ("prompt", "use", "brand", "batch_id"):
            batch.drop_column(column)
