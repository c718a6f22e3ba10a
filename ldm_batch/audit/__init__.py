"""The audit log: append-only, hash-chained SQL records of every row and image."""

from ldm_batch.audit.log import AuditLog, AuditRecord, VerifyReport

__all__ = ["AuditLog", "AuditRecord", "VerifyReport"]
