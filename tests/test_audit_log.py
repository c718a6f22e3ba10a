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


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def log(request, tmp_path):
    url = f"sqlite:///{tmp_path / 'audit.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    audit = AuditLog(url)
    audit.migrate()
    audit.append([record(i) for i in range(1, 6)])
    yield audit
    audit.engine.dispose()


def test_untouched_log_verifies(log):
    report = log.verify()
    assert (report.ok, report.records, report.problems) == (True, 5, [])


@pytest.mark.parametrize("tamper, finding", [
    ("UPDATE audit_records SET payload = replace(payload, 'prompt 3', 'prompt X') WHERE seq = 3", "edited"),
    ("UPDATE audit_records SET decision = 'delivered' WHERE seq = 2", "column decision"),
    ("DELETE FROM audit_records WHERE seq = 3", "missing or reordered"),
    ("DELETE FROM audit_records WHERE seq = 5", "chain head"),
    ("UPDATE audit_records SET seq = seq + 100 WHERE seq = 2", "missing or reordered"),
])
def test_tampering_is_detected(log, tamper, finding):
    with log.engine.begin() as connection:
        connection.execute(text(tamper))
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
    assert report.ok and report.records == 45


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
