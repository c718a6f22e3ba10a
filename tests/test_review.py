"""Quarantine and human review: blocked images never reach delivery; a reviewer clears the
queue from the CLI; every decision is a new audit record; a broken screen quarantines."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
from typer.testing import CliRunner

from conftest import REPO
from ldm_batch.audit import AuditLog
from ldm_batch.cli import app
from ldm_batch.storage import ObjectStore

EMBLEM_SHEET = ("asset_id,prompt,seed\n"
                "aid-1,white background with a red plus sign,3\n"
                "calm-1,a blue circle on a yellow background,3\n")


@pytest.fixture
def quarantined(prefect_harness, settings, tmp_path):
    from flows.campaign_batch import campaign_batch

    sheet = tmp_path / "emblem.csv"
    sheet.write_text(EMBLEM_SHEET)
    campaign_batch(sheet=str(sheet), campaign="review")
    (record,) = AuditLog(settings.audit_url).review_queue()
    return record


def cli(*args):
    return CliRunner().invoke(app, list(args))


def test_reviewer_approves_a_quarantined_image(quarantined, settings):
    listed = cli("review", "list", "--json")
    assert [json.loads(line)["image_key"] for line in listed.stdout.splitlines()] == [quarantined.image_key]
    store = ObjectStore(settings)
    assert not store.keys("delivery/review/aid-1")

    result = cli("review", "approve", quarantined.image_key, "--reason", "first-aid poster, licensed use",
                 "--reviewer", "alice", "--json")
    assert result.exit_code == 0, result.output
    delivered = store.get(f"delivery/{quarantined.image_key}")
    assert hashlib.sha256(delivered).hexdigest() == quarantined.image_sha256
    assert cli("review", "list", "--json").stdout.strip() == ""

    log = AuditLog(settings.audit_url)
    (review,) = log.query(kind="review")
    assert (review["decision"], review["reviewer"]) == ("approved", "alice")
    assert "licensed use" in review["reasons"][0]
    assert log.query(kind="image", asset_id="aid-1")[0]["decision"] == "quarantined"  # never updated
    assert [r["asset_id"] for r in log.query(reviewer="alice")] == ["aid-1"] and not log.query(reviewer="bob")
    assert log.verify().ok


def test_rejected_image_stays_out_of_delivery(quarantined, settings):
    result = cli("review", "reject", quarantined.s3_key, "--reason", "protected emblem", "--reviewer", "bob")
    assert result.exit_code == 0, result.output
    assert not ObjectStore(settings).keys("delivery/review/aid-1")
    assert AuditLog(settings.audit_url).query(kind="review")[0]["decision"] == "rejected"
    again = cli("review", "approve", quarantined.image_key, "--reason", "changed my mind")
    assert again.exit_code == 2  # decided already: not in the queue


def test_delivery_consumers_cannot_list_or_read_quarantine(quarantined, settings, s3_server):
    """The delivery-reader identity (what a delivery consumer gets) sees delivered images only."""
    import boto3
    from botocore.exceptions import ClientError

    reader = boto3.client("s3", endpoint_url=s3_server.endpoint_url, region_name="us-east-1",
                          aws_access_key_id=s3_server.reader_access_key_id,
                          aws_secret_access_key=s3_server.reader_secret_access_key)
    bucket = settings.s3_bucket
    listed = reader.list_objects_v2(Bucket=bucket, Prefix="delivery/")
    (delivered,) = [o["Key"] for o in listed["Contents"]]
    assert delivered.startswith("delivery/review/calm-1/")
    assert reader.get_object(Bucket=bucket, Key=delivered)["Body"].read()[:4] == b"\x89PNG"
    for attempt in (lambda: reader.list_objects_v2(Bucket=bucket, Prefix="quarantine/"),
                    lambda: reader.list_objects_v2(Bucket=bucket),
                    lambda: reader.get_object(Bucket=bucket, Key=quarantined.s3_key),
                    lambda: reader.put_object(Bucket=bucket, Key="delivery/review/forged.png", Body=b"x")):
        with pytest.raises(ClientError) as denied:
            attempt()
        assert denied.value.response["Error"]["Code"] == "AccessDenied"


def test_a_decision_needs_a_reason(quarantined):
    assert cli("review", "approve", quarantined.image_key, "--reason", "  ").exit_code == 2
    assert cli("review", "approve", quarantined.image_key).exit_code == 2


def test_broken_image_screen_quarantines_instead_of_delivering(prefect_harness, settings, tmp_path, monkeypatch):
    from flows.campaign_batch import campaign_batch

    policies = tmp_path / "policies"
    shutil.copytree(REPO / "policies", policies)
    catalog = (policies / "models.yaml").read_text()
    clip_sha = catalog.split("id: demo-clip", 1)[1].split("sha256: ", 1)[1].split()[0]
    (policies / "models.yaml").write_text(catalog.replace(clip_sha, "bad" + "0" * 61))  # the screen cannot load
    monkeypatch.setenv("LDM_BATCH_POLICIES_DIR", str(policies))
    sheet = tmp_path / "calm.csv"
    sheet.write_text("asset_id,prompt\ncalm-1,a blue circle on a yellow background\n")

    summary = campaign_batch(sheet=str(sheet), campaign="broken")
    assert summary.images_blocked == 1 and summary.images_delivered == 0
    (record,) = AuditLog(settings.audit_url).query(kind="image")
    assert record["decision"] == "quarantined" and "image screen failed" in record["reasons"][0]
    assert ObjectStore(settings).keys("delivery/") == []
