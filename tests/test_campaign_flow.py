"""The campaign flow end to end: Prefect, diffusers, open_clip, SeaweedFS, SQLite/PostgreSQL.

Given the acceptance sheet campaign_small.csv, when the flow runs, then spring-04 is
refused with a reason, five images are stored, and six audit records account for every
row and image, with the objects' sha256 equal to the audit log's.
"""

from __future__ import annotations

import hashlib
import io

import pytest
from PIL import Image

from conftest import REPO
from ldm_batch.audit import AuditLog
from ldm_batch.config import Settings
from ldm_batch.storage import ObjectStore

SMALL = str(REPO / "examples" / "campaign_small.csv")


def run_flow(campaign: str = "spring") -> dict:
    from flows.campaign_batch import campaign_batch

    return campaign_batch(sheet=SMALL, campaign=campaign).model_dump(mode="json")


def assert_campaign_small_stored_and_audited(summary: dict, settings: Settings) -> None:
    assert summary["rows"] == 5
    assert summary["prompts_blocked"] == 1
    assert summary["images"] == summary["images_stored"] == 5
    assert summary["refused"][0]["asset_id"] == "spring-04"
    assert "corpse" in summary["refused"][0]["reasons"][0]

    records = AuditLog(settings.audit_url).query(run_id=summary["run_id"])
    assert len(records) == 6
    refused = [r for r in records if r["kind"] == "row"]
    assert [(r["asset_id"], r["decision"]) for r in refused] == [("spring-04", "blocked")]
    assert refused[0]["reasons"] and refused[0]["text_verdict"]["categories"] == ["violence"]

    images = [r for r in records if r["kind"] == "image"]
    assert sorted((r["asset_id"], r["variant"]) for r in images) == [
        ("spring-01", 1), ("spring-01", 2), ("spring-02", 1), ("spring-03", 1), ("spring-05", 1)]
    store = ObjectStore(settings)
    for record in images:
        assert record["model_license"]["id"] == "Apache-2.0"
        assert isinstance(record["seed"], int)
        assert record["cost"] > 0 and record["currency"] == "USD"
        assert record["image_verdict"]["scores"]
        body = store.get(record["s3_key"])
        assert hashlib.sha256(body).hexdigest() == record["image_sha256"]
        head = store.head(record["s3_key"])
        assert head["Metadata"]["run-id"] == summary["run_id"]
        assert head["Metadata"]["image-key"] == record["image_key"]
    by_asset = {r["asset_id"]: r for r in images}
    assert by_asset["spring-02"]["seed"] == 42 and by_asset["spring-05"]["seed"] == 7
    assert [lora["id"] for lora in by_asset["spring-01"]["loras"]] == ["acme-style"]
    assert [lora["id"] for lora in by_asset["spring-03"]["loras"]] == ["globex-style"]
    assert by_asset["spring-05"]["loras"] == []
    assert len(store.image_keys()) == 5
    assert AuditLog(settings.audit_url).verify().ok
    sheet_key = summary["contact_sheet"].removeprefix(f"s3://{settings.s3_bucket}/")
    assert sheet_key == f"reports/spring/{summary['run_id']}/contact-sheet.png"
    assert Image.open(io.BytesIO(store.get(sheet_key))).size == (8 * 128, 128 + 30)  # 5 tiles, one row


def test_campaign_small_on_sqlite(prefect_harness, settings):
    summary = run_flow()
    assert_campaign_small_stored_and_audited(summary, settings)


@pytest.mark.postgres
def test_campaign_small_on_postgresql(prefect_harness, settings, postgres_url, monkeypatch):
    monkeypatch.setenv("LDM_BATCH_DATABASE_URL", postgres_url)
    settings = Settings()
    summary = run_flow()
    assert_campaign_small_stored_and_audited(summary, settings)


def test_second_run_of_the_same_sheet_generates_and_stores_nothing(prefect_harness, settings):
    first = run_flow()
    keys = sorted(ObjectStore(settings).image_keys())
    second = run_flow()
    assert second["images_generated"] == 0 and second["images_stored"] == 0
    assert second["images_reused"] == 5
    assert sorted(ObjectStore(settings).image_keys()) == keys
    log = AuditLog(settings.audit_url)
    assert len(log.query(kind="image")) == 5  # no duplicate image records
    assert [r["asset_id"] for r in log.query(run_id=second["run_id"])] == ["spring-04"]  # every row accounted
    assert first["run_id"] != second["run_id"]


def test_lost_object_is_restored_with_the_same_bytes(prefect_harness, settings):
    run_flow()
    store = ObjectStore(settings)
    record = AuditLog(settings.audit_url).query(asset_id="spring-02")[0]
    original = store.get(record["s3_key"])
    store.client.delete_object(Bucket=store.bucket, Key=record["s3_key"])

    again = run_flow()
    assert again["images_repaired"] == again["images_stored"] == 1
    assert again["images_reused"] == 4 and again["images_generated"] == 0  # made again in its recorded batch
    assert store.get(record["s3_key"]) == original
    assert len(AuditLog(settings.audit_url).query(kind="image")) == 5
