"""Secrets never travel to a Dask worker: what the flow ships to it holds none, and a worker
fills them from its own environment or refuses (never falling back to another database)."""

from __future__ import annotations

import pickle

import pytest
from pydantic import SecretStr

from ldm_batch.config import Settings, fill_secrets, secret_environment, split_secrets


def settings() -> Settings:
    return Settings(database_url=SecretStr("postgresql+psycopg://u:db-pass-123@db/audit"),
                    s3_endpoint_url="http://s3:9000", s3_access_key_id="AKIA-shipped-not",
                    s3_secret_access_key=SecretStr("s3-secret-456"))


def test_shipped_settings_hold_no_secret():
    shipped, names = split_secrets(settings())
    wire = pickle.dumps(shipped)
    for secret in (b"db-pass-123", b"s3-secret-456", b"AKIA-shipped-not"):
        assert secret not in wire
    assert names == ("database_url", "s3_access_key_id", "s3_secret_access_key")


def test_a_worker_fills_secrets_from_its_own_environment(monkeypatch):
    shipped, names = split_secrets(settings())
    for name, value in secret_environment(settings()).items():
        monkeypatch.setenv(name, value)
    filled = fill_secrets(shipped, names)
    assert filled.audit_url.endswith("db-pass-123@db/audit")
    assert filled.s3_secret_access_key.get_secret_value() == "s3-secret-456"


def test_a_worker_without_the_secrets_refuses(monkeypatch):
    for name in ("LDM_BATCH_DATABASE_URL", "LDM_BATCH_S3_ACCESS_KEY_ID", "LDM_BATCH_S3_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    shipped, names = split_secrets(settings())
    with pytest.raises(RuntimeError, match="LDM_BATCH_DATABASE_URL"):
        fill_secrets(shipped, names)
