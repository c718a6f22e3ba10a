"""audit log: runs, hash-chained audit records, chain head

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("campaign", sa.String(128), nullable=False, index=True),
        sa.Column("sheet", sa.String(512), nullable=False),
        sa.Column("sheet_sha256", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("summary", sa.Text),
    )
    op.create_table(
        "audit_records",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("run_id", sa.String(36), nullable=False, index=True),
        sa.Column("campaign", sa.String(128), nullable=False, index=True),
        sa.Column("asset_id", sa.String(128), nullable=False, index=True),
        sa.Column("decision", sa.String(16), nullable=False, index=True),
        sa.Column("model_id", sa.String(256)),
        sa.Column("model_license", sa.String(128)),
        sa.Column("seed", sa.BigInteger),
        sa.Column("cost", sa.Float),
        sa.Column("image_key", sa.String(512), index=True),
        sa.Column("image_sha256", sa.String(64)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("record_hash", sa.String(64), nullable=False, unique=True),
    )
    op.create_table(
        "chain_head",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    op.execute(sa.text("INSERT INTO chain_head (id, seq, hash) VALUES (1, 0, '" + "0" * 64 + "')"))


def downgrade() -> None:
    op.drop_table("chain_head")
    op.drop_table("audit_records")
    op.drop_table("runs")
