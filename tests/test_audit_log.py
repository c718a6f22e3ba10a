"""Audit log: append-only and hash-chained; edits, deletions and reordering are found."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from ldm_batch.audit import AuditLog, AuditRecord
from ldm_batch.cli import app


def record(i: int) -> AuditRecord:
    return AuditRecord(kind="row", run_id="run-1", campaign="c", sheet="s.csv", sheet_row=i,
                       asset_id=f"a-{i}", decision="blocked", prompt=f"prompt {i}", text_verdict={},
                       created_at="2026-11-23T00:00:00+00:00")


def image_and_review() -> list[AuditRecord]:
    """An image made with a LoRA (record 6) and a reviewer's approval of it (record 7)."""
    lora = {"id": "acme-palette", "scale": 1.0, "sha256": "ab" * 32,
            "license": {"id": "Apache-2.0", "url": None, "commercial_use": True}}
    image = record(6).model_copy(update={"kind": "image", "decision": "quarantined", "loras": [lora],
                                         "image_key": "c/a-6/v1.png"})
    review = image.model_copy(update={"kind": "review", "decision": "approved", "reviewer": "alice",
                                      "reasons": ["approved by alice: licensed poster"]})
    return [image, review]


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def log(request, tmp_path):
    url = f"sqlite:///{tmp_path / 'audit.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    audit = AuditLog(url)
    audit.migrate()
    audit.append([record(i) for i in range(1, 6)])
    audit.append(image_and_review())
    yield audit
    audit.engine.dispose()


def test_untouched_log_verifies(log):
    report = log.verify()
    assert (report.ok, report.records, report.problems) == (True, 7, [])
    assert [(r["kind"], r["asset_id"]) for r in log.query(lora="acme-palette")] == [("image", "a-6")]
    assert [r["kind"] for r in log.query(reviewer="alice")] == ["review"]
    assert [r["seq"] for r in log.query(license="Apache-2.0")] == [6]  # a LoRA's license counts too


@pytest.mark.parametrize("tamper, finding", [
    ("UPDATE audit_records SET payload = replace(payload, 'prompt 3', 'prompt X') WHERE seq = 3", "edited"),
    ("UPDATE audit_records SET decision = 'delivered' WHERE seq = 2", "column decision"),
    ("DELETE FROM audit_records WHERE seq = 3", "missing or reordered"),
    ("DELETE FROM reviews WHERE record_seq = 7; DELETE FROM audit_records WHERE seq = 7", "chain head"),
    ("UPDATE audit_records SET seq = seq + 100 WHERE seq = 2", "missing or reordered"),
    ("UPDATE lora_uses SET license_id = 'MIT'", "LoRA-use or review rows differ"),
    ("UPDATE reviews SET reviewer = 'mallory'", "LoRA-use or review rows differ"),
    ("DELETE FROM reviews", "LoRA-use or review rows differ"),
])
def test_tampering_is_detected(log, tamper, finding):
    with log.engine.begin() as connection:
        for statement in tamper.split("; "):
            connection.execute(text(statement))
    report = log.verify()
    assert not report.ok
    assert any(finding in p for p in report.problems), report.problems


def test_concurrent_writers_extend_one_chain(log):
    def write(worker: int) -> None:
        for i in range(10):
            log.append([record(100 * worker + i)])

    threads = [threading.Thread(target=write, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    report = log.verify()
    assert report.ok and report.records == 47


def test_cli_verify_exits_1_on_a_broken_chain(settings):
    audit = AuditLog(settings.audit_url)
    audit.migrate()
    audit.append([record(1), record(2)])
    assert CliRunner().invoke(app, ["audit", "verify", "--json"]).exit_code == 0
    with audit.engine.begin() as connection:
        connection.execute(text("UPDATE audit_records SET payload = replace(payload, 'prompt 1', 'p') WHERE seq = 1"))
    result = CliRunner().invoke(app, ["audit", "verify", "--json"])
    assert result.exit_code == 1
    assert '"ok":false' in result.stdout.replace(" ", "")


def test_upgrade_fills_lora_uses_and_reviews_from_existing_records(log):
    from alembic import command
    from alembic.config import Config

    from ldm_batch.audit.log import MIGRATIONS

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with log.engine.connect() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "0002")  # a log from before the normalised tables
        command.upgrade(config, "head")
        connection.commit()
    assert log.verify().ok
    assert [r["seq"] for r in log.query(reviewer="alice")] == [7]
    assert [r["seq"] for r in log.query(lora="acme-palette")] == [6]
