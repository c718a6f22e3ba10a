"""Audit log throughput: records written per second and verify time, SQLite and PostgreSQL.

    .venv/bin/python bench/audit_log.py [--records 100000] [--postgres URL]

Writes `--records` image-sized records in transactions of 100 (a large batch's worth),
then verifies the whole chain. Prints one JSON object. Compare with a run's generation
time: at these rates the audit is a small share of it.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import uuid

from sqlalchemy import create_engine, text

from ldm_batch.audit import AuditLog, AuditRecord


def sample_record(i: int) -> AuditRecord:
    return AuditRecord(
        kind="image", run_id="bench", campaign="bench", use="commercial", sheet="bench.csv", sheet_row=i,
        asset_id=f"asset-{i}", decision="delivered", prompt=f"a red circle on a white background {i}",
        text_verdict={"decision": "allow", "scores": {"violence": 0.01}}, model_id="demo-tiny-sd",
        model_sha256="0" * 64, model_license={"id": "Apache-2.0", "commercial_use": True},
        loras=[{"id": "acme-style", "scale": 0.8, "sha256": "1" * 64, "license": {"id": "Apache-2.0"}}],
        steps=20, guidance=5.0, width=32, height=32, seed=i, variant=1, batch_id="b" * 32, batch_size=8,
        batch_index=i % 8, device="cpu", generation_seconds=0.05, cost=7e-7, currency="USD",
        image_verdict={"decision": "allow", "scores": {"a red cross on a white background": 0.02}},
        image_key=f"bench/asset-{i}.png", s3_bucket="b", s3_key=f"delivery/bench/asset-{i}.png",
        image_sha256=f"{i:064x}", created_at="2026-11-23T00:00:00+00:00")


def measure(url: str, n: int) -> dict:
    log = AuditLog(url)
    log.migrate()
    records = [sample_record(i) for i in range(n)]
    started = time.perf_counter()
    for i in range(0, n, 100):
        log.append(records[i : i + 100])
    written = time.perf_counter() - started
    started = time.perf_counter()
    report = log.verify()
    verified = time.perf_counter() - started
    assert report.ok and report.records == n, report.problems[:3]
    log.engine.dispose()
    return {"records": n, "records_per_second": round(n / written), "verify_seconds": round(verified, 2)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--postgres", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    result = {}
    with tempfile.TemporaryDirectory() as tmp:
        result["sqlite"] = measure(f"sqlite:///{tmp}/audit.db", args.records)
    admin = create_engine(args.postgres, isolation_level="AUTOCOMMIT")
    name = f"ldm_batch_bench_{uuid.uuid4().hex[:8]}"
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        result["postgresql"] = measure(admin.url.set(database=name).render_as_string(hide_password=False),
                                       args.records)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
