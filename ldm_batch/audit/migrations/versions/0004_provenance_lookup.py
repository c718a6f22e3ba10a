"""provenance lookup columns: pixel digest, watermark id and perceptual hash of image records

Revision ID: 0004
Revises: 0003
"""

import json

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

COLUMNS = ("pixels_sha256", "watermark_id", "perceptual_hash")


def upgrade() -> None:
    with op.batch_alter_table("audit_records") as batch:
        batch.add_column(sa.Column("pixels_sha256", sa.String(64)))
        batch.add_column(sa.Column("watermark_id", sa.String(16)))
        batch.add_column(sa.Column("perceptual_hash", sa.String(16)))
        batch.create_index("ix_audit_records_image_sha256", ["image_sha256"])
        batch.create_index("ix_audit_records_pixels_sha256", ["pixels_sha256"])
        batch.create_index("ix_audit_records_watermark_id", ["watermark_id"])
    records = sa.table("audit_records", sa.column("seq", sa.Integer), sa.column("payload", sa.Text),
                       *(sa.column(name, sa.String) for name in COLUMNS))
    connection = op.get_bind()
    for seq, payload in connection.execute(sa.select(records.c.seq, records.c.payload)).all():
        values = {name: json.loads(payload).get(name) for name in COLUMNS}
        if any(values.values()):  # records made before this version have a pixel digest only
            connection.execute(records.update().where(records.c.seq == seq).values(**values))


def downgrade() -> None:
    with op.batch_alter_table("audit_records") as batch:
        for index in ("image_sha256", "pixels_sha256", "watermark_id"):
            batch.drop_index(f"ix_audit_records_{index}")
        for name in COLUMNS:
            batch.drop_column(name)
