"""Shared test fixtures: a real SeaweedFS, a real PostgreSQL database, Prefect's test harness.

Every test gets its own bucket and its own audit database, so tests never see each
other's images or records.
"""

from __future__ import annotations

import json
import os
import random
import socket
import tempfile
import uuid
from pathlib import Path

import pytest

from ldm_batch.orchestration import configure_prefect

REPO = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
SESSION_HOME = Path(tempfile.mkdtemp(prefix="ldm-batch-tests-"))
configure_prefect(SESSION_HOME)  # before anything imports prefect
POSTGRES_ADMIN_URL = os.environ.get("LDM_BATCH_TEST_POSTGRES_URL",
                                    "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def free_base_port() -> int:
    """A base port whose SeaweedFS ports (base..base+7, and +10000 for gRPC) are all free."""
    from ldm_batch.embedded_s3 import PORT_OFFSETS

    for _ in range(200):
        base = random.randrange(20000, 30000, 10)
        ports = [base + o for o in PORT_OFFSETS.values()] + [base + 10000 + o for o in PORT_OFFSETS.values()]
        if all(_free(p) for p in ports):
            return base
    raise RuntimeError("no free ports for SeaweedFS")


def _free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


@pytest.fixture(autouse=True, scope="module")
def _loaded_models_dropped_after_each_module():
    """A process keeps the models of every settings value it has run with (Parts, one set
    each, 0.3-0.5 GB); the tests make dozens, and a full run's process grew past 19 GB of the
    machine's 24 before each module's sets were dropped after it."""
    yield
    import gc

    from ldm_batch.parts import Parts

    Parts.drop_all()
    gc.collect()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real SeaweedFS S3 server with enforced credentials, for the whole session."""
    from ldm_batch.embedded_s3 import embedded_s3

    with embedded_s3(tmp_path_factory.mktemp("s3"), free_base_port()) as server:
        yield server


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def settings(s3_server, tmp_path, monkeypatch):
    """Settings for one test: a fresh bucket and a fresh SQLite audit log."""
    from ldm_batch.config import Settings

    env = {
        "LDM_BATCH_HOME": str(SESSION_HOME),
        "LDM_BATCH_DATABASE_URL": f"sqlite:///{tmp_path / 'audit.db'}",
        "LDM_BATCH_S3_ENDPOINT_URL": s3_server.endpoint_url,
        "LDM_BATCH_S3_ACCESS_KEY_ID": s3_server.access_key_id,
        "LDM_BATCH_S3_SECRET_ACCESS_KEY": s3_server.secret_access_key,
        "LDM_BATCH_S3_BUCKET": f"test-{uuid.uuid4().hex[:12]}",
        # the flows read local sheets only from these folders: the test's own and the examples
        "LDM_BATCH_SHEET_ROOTS": json.dumps([str(tmp_path), str(REPO / "examples")]),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    yield Settings()
    _remove_bucket(s3_server, env["LDM_BATCH_S3_BUCKET"])


def _remove_bucket(server, bucket: str) -> None:
    """Empty and delete a test's bucket: SeaweedFS gives each bucket its own volumes, and a
    session's server has only as many as its disk allows (about one per GB free), so a suite
    that kept every bucket would run out of writable volumes. Objects under a compliance lock
    stay, and so does their bucket."""
    import boto3
    from botocore.config import Config

    client = boto3.client("s3", endpoint_url=server.endpoint_url, aws_access_key_id=server.access_key_id,
                          aws_secret_access_key=server.secret_access_key, region_name="us-east-1",
                          config=Config(retries={"max_attempts": 2}))
    try:
        for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket):
            for version in page.get("Versions", []) + page.get("DeleteMarkers", []):
                try:
                    client.delete_object(Bucket=bucket, Key=version["Key"], VersionId=version["VersionId"])
                except client.exceptions.ClientError:
                    pass  # locked
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for obj in page.get("Contents", []):
                client.delete_object(Bucket=bucket, Key=obj["Key"])
        client.delete_bucket(Bucket=bucket)
    except client.exceptions.ClientError:
        pass  # not made by the test, or locked objects remain


@pytest.fixture
def postgres_url():
    """A new, empty PostgreSQL database on the local server, dropped afterwards."""
    from sqlalchemy import create_engine, text

    name = f"ldm_batch_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = admin.url.set(database=name).render_as_string(hide_password=False)
    yield url
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def signing(tmp_path, monkeypatch):
    """A throwaway CA and signer, configured for C2PA signing; returns the CA's PEM."""
    from c2pa_certs import make_signing_chain

    (tmp_path / "certs").mkdir()
    ca, chain, key = make_signing_chain(tmp_path / "certs")
    monkeypatch.setenv("LDM_BATCH_C2PA_CERTIFICATE", str(chain))
    monkeypatch.setenv("LDM_BATCH_C2PA_PRIVATE_KEY", str(key))
    return ca.read_text()


@pytest.fixture(scope="session")
def policies():
    from ldm_batch.policies import load_policies

    return load_policies(REPO / "policies")
