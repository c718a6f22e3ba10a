"""normalised LoRA uses and reviews, filled from the records already in the log

Revision ID: 0003
Revises: 0002
"""

import json

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    lora_uses = op.create_table(
        "lora_uses",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("record_seq", sa.Integer, sa.ForeignKey("audit_records.seq"), nullable=False, index=True),
        sa.Column("lora_id", sa.String(256), nullable=False, index=True),
        sa.Column("scale", sa.Float, nullable=False),
        sa.Column("sha256", sa.String(64)),
        sa.Column("license_id", sa.String(128), index=True),
        sa.Column("commercial_use", sa.Boolean),
    )
    reviews = op.create_table(
        "reviews",
        sa.Column("record_seq", sa.Integer, sa.ForeignKey("audit_records.seq"), primary_key=True),
        sa.Column("image_key", sa.String(512), nullable=False, index=True),
        sa.Column("reviewer", sa.String(128), nullable=False, index=True),
        sa.Column("decision", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    records = sa.table("audit_records", sa.column("seq", sa.Integer), sa.column("kind", sa.String),
                       sa.column("payload", sa.Text), sa.column("created_at", sa.DateTime(timezone=True)))
    connection = op.get_bind()
    uses, decisions = [], []
    for seq, kind, payload, created_at in connection.execute(
            sa.select(records.c.seq, records.c.kind, records.c.payload, records.c.created_at)
            .where(records.c.kind.in_(("image", "review")))):
        payload = json.loads(payload)
        if kind == "image":
            uses += [{"record_seq": seq, "lora_id": lora["id"], "scale": lora["scale"], "sha256": lora.get("sha256"),
                      "license_id": (lora.get("license") or {}).get("id"),
                      "commercial_use": (lora.get("license") or {}).get("commercial_use")}
                     for lora in payload.get("loras", [])]
        else:
            decisions.append({"record_seq": seq, "image_key": payload["image_key"], "reviewer": payload["reviewer"],
                              "decision": payload["decision"], "reason": "; ".join(payload["reasons"]),
                              "created_at": created_at})
    if uses:
        op.bulk_insert(lora_uses, uses)
    if decisions:
        op.bulk_insert(reviews, decisions)


def downgrade() -> None:
    op.drop_table("reviews")
    op.drop_table("lora_uses")
