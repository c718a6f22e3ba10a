"""SQLAlchemy 2 tables of the audit log. Changes go through an Alembic migration."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, DateTime, Float, ForeignKey, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Run(Base):
    """Operational state of a run (status and counts change); the audit trail is `Record`."""

    __tablename__ = "runs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    campaign: Mapped[str] = mapped_column(String(128), index=True)
    sheet: Mapped[str] = mapped_column(String(512))
    sheet_sha256: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    summary: Mapped[str | None] = mapped_column(Text)
    started_by: Mapped[str | None] = mapped_column(String(128))  # the console author who started it


class Record(Base):
    """One audit record: a refused row or an image. Never updated; hash-chained by `seq`."""

    __tablename__ = "audit_records"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    kind: Mapped[str] = mapped_column(String(8))
    run_id: Mapped[str] = mapped_column(String(36), index=True)
    campaign: Mapped[str] = mapped_column(String(128), index=True)
    asset_id: Mapped[str] = mapped_column(String(128), index=True)
    decision: Mapped[str] = mapped_column(String(16), index=True)
    model_id: Mapped[str | None] = mapped_column(String(256))
    model_license: Mapped[str | None] = mapped_column(String(128))
    seed: Mapped[int | None] = mapped_column(BigInteger)
    cost: Mapped[float | None] = mapped_column(Float)
    image_key: Mapped[str | None] = mapped_column(String(512), index=True)
    image_sha256: Mapped[str | None] = mapped_column(String(64), index=True)
    pixels_sha256: Mapped[str | None] = mapped_column(String(64), index=True)
    watermark_id: Mapped[str | None] = mapped_column(String(16), index=True)
    perceptual_hash: Mapped[str | None] = mapped_column(String(16))
    batch_id: Mapped[str | None] = mapped_column(String(64), index=True)
    brand: Mapped[str | None] = mapped_column(String(128), index=True)
    use: Mapped[str | None] = mapped_column(String(32))
    prompt: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    payload: Mapped[str] = mapped_column(Text)
    prev_hash: Mapped[str] = mapped_column(String(64))
    record_hash: Mapped[str] = mapped_column(String(64), unique=True)


class ChainHead(Base):
    """A single row naming the last record; writers lock it, so the chain never forks."""

    __tablename__ = "chain_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(Integer)
    hash: Mapped[str] = mapped_column(String(64))


class LoraUse(Base):
    """One LoRA an image record used: a normalised copy of the hashed payload's `loras`."""

    __tablename__ = "lora_uses"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    record_seq: Mapped[int] = mapped_column(ForeignKey("audit_records.seq"), index=True)
    lora_id: Mapped[str] = mapped_column(String(256), index=True)
    scale: Mapped[float] = mapped_column(Float)
    sha256: Mapped[str | None] = mapped_column(String(64))
    license_id: Mapped[str | None] = mapped_column(String(128), index=True)
    commercial_use: Mapped[bool | None] = mapped_column(Boolean)


class Review(Base):
    """A reviewer's decision: a normalised copy of a review record's payload."""

    __tablename__ = "reviews"

    record_seq: Mapped[int] = mapped_column(ForeignKey("audit_records.seq"), primary_key=True)
    image_key: Mapped[str] = mapped_column(String(512), index=True)
    reviewer: Mapped[str] = mapped_column(String(128), index=True)
    decision: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
