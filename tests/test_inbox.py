"""The S3 inbox: `ldm-batch submit` and the inbox sweep run each sheet once, file it under
processed/ or rejected/ with a report, and give a sheet back when its run fails for
reasons that are not the sheet's (here: the audit database refuses connections)."""

from __future__ import annotations

import hashlib
import json

import pytest
from typer.testing import CliRunner

from flows.inbox_sweep import inbox_sweep
from ldm_batch.audit import AuditLog
from ldm_batch.cli import app
from ldm_batch.inbox import Inbox
from ldm_batch.storage import ObjectStore

SHEET = ("asset_id,prompt,brand,variants,seed\n"
         "in-1,a red circle on a white background,acme,2,1\n"
         "in-2,a blue square on a yellow background,globex,1,2\n")


def inbox_of(settings) -> Inbox:
    store = ObjectStore(settings)
    store.ensure_bucket()
    return Inbox(store, settings.inbox_prefix)


def report(store: ObjectStore, key: str) -> dict:
    return json.loads(store.get(key))


def test_submitted_sheet_runs_once_and_is_filed_with_its_report(prefect_harness, settings, tmp_path):
    sheet = tmp_path / "spring.csv"
    sheet.write_text(SHEET)
    result = CliRunner().invoke(app, ["submit", str(sheet), "--campaign", "spring", "--json"])
    assert result.exit_code == 0, result.output
    sweep = json.loads(result.stdout.strip().splitlines()[-1])
    [done] = sweep["processed"]
    inbox, store = inbox_of(settings), ObjectStore(settings)
    sha = hashlib.sha256(SHEET.encode()).hexdigest()

    assert inbox.waiting() == []
    assert done["report"] == f"inbox/processed/{sha}/{sha[:12]}-spring.csv.report.json"
    assert store.get(f"inbox/processed/{sha}/{sha[:12]}-spring.csv") == SHEET.encode()
    filed = report(store, done["report"])
    assert filed["outcome"] == "processed" and filed["campaign"] == "spring" and filed["images_stored"] == 3
    log = AuditLog(settings.audit_url)
    assert len(log.query(run_id=done["run_id"], kind="image")) == 3
    runs = len(log.runs())

    # the same bytes again, by submit: told where the first report is, nothing run
    again = CliRunner().invoke(app, ["submit", str(sheet), "--json"])
    assert again.exit_code == 0 and json.loads(again.stdout.strip().splitlines()[-1])["already"] == "processed"
    # and dropped by hand under another name: rejected as a copy, pointing at the first report
    store.client.put_object(Bucket=store.bucket, Key="inbox/spring-copy.csv", Body=SHEET.encode())
    swept = inbox_sweep()
    [copy] = swept["rejected"]
    assert copy["duplicate_of"] == done["report"] and swept["processed"] == []
    assert "was run before" in report(store, copy["report"])["errors"][0]["message"]
    assert len(log.runs()) == runs and inbox.waiting() == []


def test_bad_sheets_dropped_in_the_inbox_are_rejected_with_row_and_column(prefect_harness, settings):
    inbox = inbox_of(settings)
    store = inbox.store
    store.client.put_object(Bucket=store.bucket, Key="inbox/bad-variants.csv",
                            Body=b"asset_id,prompt,variants\nb-1,a red circle,lots\n")
    store.client.put_object(Bucket=store.bucket, Key="inbox/bad-campaign.csv", Body=SHEET.encode(),
                            Metadata={"campaign": "../etc", "use": "resale"})
    store.client.put_object(Bucket=store.bucket, Key="inbox/huge.csv", Body=b"prompt\n" + b"x" * 20_000_000)
    swept = inbox_sweep()

    assert swept["processed"] == [] and len(swept["rejected"]) == 3
    reports = {entry["sheet"]: report(store, entry["report"]) for entry in swept["rejected"]}
    variants, campaign = reports["inbox/bad-variants.csv"], reports["inbox/bad-campaign.csv"]
    assert "the policy maximum is 20000000" in reports["inbox/huge.csv"]["errors"][0]["message"]
    assert variants["errors"][0]["row"] == 1 and variants["errors"][0]["column"] == "variants"
    assert "whole number" in variants["errors"][0]["message"]
    assert {e["message"].split(" ")[0] for e in campaign["errors"]} == {"campaign", "use"}
    assert inbox.waiting() == [] and store.image_keys() == []
    assert AuditLog(settings.audit_url).query(kind="image") == []


def test_a_sheet_another_sweep_holds_is_left_alone(prefect_harness, settings):
    inbox = inbox_of(settings)
    sheet = inbox.submit("held.csv", SHEET.encode())
    assert inbox.claim(sheet, by="another sweep") and not inbox.claim(sheet, by="this sweep")

    swept = inbox_sweep()
    assert swept["waiting"] == [{"sheet": sheet.key, "claimed_by": "another sweep",
                                 "since": inbox.claimed_by(sheet)["claimed_at"]}]
    assert [s.key for s in inbox.waiting()] == [sheet.key] and inbox.store.image_keys() == []


def test_a_run_that_fails_gives_the_sheet_back_for_the_next_sweep(prefect_harness, settings, monkeypatch):
    inbox = inbox_of(settings)
    sheet = inbox.submit("retry.csv", SHEET.encode(), campaign="retry")
    monkeypatch.setenv("LDM_BATCH_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:1/nothing")
    with pytest.raises(RuntimeError, match="stay in the inbox"):
        inbox_sweep()
    assert [s.key for s in inbox.waiting()] == [sheet.key] and inbox.claimed_by(sheet) is None

    monkeypatch.setenv("LDM_BATCH_DATABASE_URL", settings.audit_url)
    swept = inbox_sweep()
    assert [e["sheet"] for e in swept["processed"]] == [sheet.key]
    assert len(inbox.store.keys("delivery/retry/")) + len(inbox.store.keys("quarantine/retry/")) == 3
