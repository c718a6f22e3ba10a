"""Provenance beyond the text chunk and XMP: C2PA manifests signed with a configured key,
the invisible watermark by policy, and the spool that keeps signed images through an S3
outage (SeaweedFS stopped for real) until `ldm-batch resume` stores them."""

from __future__ import annotations

import hashlib
import io
import json
import random

import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import free_base_port
from ldm_batch.audit import AuditLog
from ldm_batch.cli import app
from ldm_batch.config import Settings
from ldm_batch.demo_kit.world import Scene, draw
from ldm_batch.policies import ProvenancePolicy
from ldm_batch.provenance import GENERATION_ASSERTION, Marker, read_c2pa, read_watermark, watermark_id
from ldm_batch.storage import ObjectStore

SHEET = ("asset_id,prompt,brand,variants,seed\n"
         "sun-1,a yellow star on a blue background,acme,2,5\n"
         "sea-1,a blue circle on a white background,globex,1,6\n")


def run_sheet(tmp_path, text=SHEET, campaign="prov"):
    sheet = tmp_path / f"{campaign}.csv"
    sheet.write_text(text)
    return CliRunner().invoke(app, ["run", str(sheet), "--campaign", campaign, "--json"])


def test_signed_c2pa_manifest_in_every_stored_png(prefect_harness, settings, signing, tmp_path):
    result = run_sheet(tmp_path)
    assert result.exit_code == 0, result.output
    store, log = ObjectStore(Settings()), AuditLog(settings.audit_url)
    records = log.query(campaign="prov", kind="image")
    assert len(records) == 3
    for record in records:
        png = store.get(record["s3_key"])
        assert hashlib.sha256(png).hexdigest() == record["image_sha256"]
        manifest_store = read_c2pa(png, trust_anchors=signing)
        assert manifest_store["validation_state"] == "Trusted"
        manifest = manifest_store["manifests"][manifest_store["active_manifest"]]
        (action,) = next(a for a in manifest["assertions"] if a["label"].startswith("c2pa.actions"))["data"]["actions"]
        assert action["digitalSourceType"].endswith("/trainedAlgorithmicMedia")
        generation = next(a for a in manifest["assertions"] if a["label"] == GENERATION_ASSERTION)["data"]
        assert (generation["prompt"], generation["seed"]) == (record["prompt"], record["seed"])
        assert json.loads(Image.open(io.BytesIO(png)).info["ldm-batch"])["seed"] == record["seed"]
        assert record["provenance"]["c2pa"]["signed"] is True
    assert read_c2pa(store.get(records[0]["s3_key"]))["validation_state"] != "Trusted"  # unknown CA

    # a signature is new on every signing; the pixels reproduce exactly
    reproduced = CliRunner().invoke(app, ["audit", "reproduce", records[0]["image_key"], "--json"])
    assert reproduced.exit_code == 0, reproduced.output
    report = json.loads(reproduced.stdout)
    assert report["pixels_identical"] and not report["identical"]


def test_tampered_signed_image_fails_c2pa_validation(signing):
    settings = Settings()
    marker = Marker(ProvenancePolicy(), settings)
    png = marker.encode(draw(Scene("red", "circle", "white")), {"prompt": "a red circle", "seed": 1}, "c/a/v0.png")
    image = Image.open(io.BytesIO(png))
    image.putpixel((0, 0), (0, 0, 0))
    edited = io.BytesIO()
    image.save(edited, format="PNG")  # PIL drops the manifest: nothing left to trust
    with pytest.raises(Exception):
        read_c2pa(edited.getvalue(), trust_anchors=signing)
    flipped = bytearray(png)
    flipped[len(png) // 3] ^= 0xFF  # one byte of image data changed under the manifest
    report = read_c2pa(bytes(flipped), trust_anchors=signing)
    assert report["validation_state"] == "Invalid"


def test_invisible_watermark_carries_the_image_id_and_small_images_say_metadata_only(prefect_harness, settings,
                                                                                    tmp_path):
    marker = Marker(ProvenancePolicy(), settings)  # the default policy: watermark on, 64-bit id
    scene = draw(Scene("red", "circle", "white"), random.Random(3), size=256)
    png = marker.encode(scene, {"seed": 1}, "camp/asset-1/v0.png")
    marked = Image.open(io.BytesIO(png))
    mark_id = watermark_id("camp/asset-1/v0.png", 64)
    assert marker.marks(png, "camp/asset-1/v0.png").watermark_id == mark_id
    assert read_watermark(marked, 64) == mark_id
    assert read_watermark(scene, 64) != mark_id
    jpeg = io.BytesIO()
    marked.save(jpeg, format="JPEG", quality=75)
    assert read_watermark(Image.open(jpeg), 64) == mark_id
    assert read_watermark(marked.resize((128, 128)).resize((256, 256)), 64) == mark_id

    # the demo model's 32x32 images cannot carry it: they are made, and their records say so
    result = run_sheet(tmp_path, campaign="tiny")
    assert result.exit_code == 0, result.output
    for record in AuditLog(settings.audit_url).query(campaign="tiny", kind="image"):
        assert record["watermark_id"] is None and len(record["perceptual_hash"]) == 16
        assert "carries metadata only" in record["provenance"]["watermark"]["reason"]


def test_s3_outage_keeps_audited_images_in_the_spool_until_resume(prefect_harness, settings, signing, tmp_path,
                                                                   monkeypatch):
    """SeaweedFS is stopped once the run has planned its images; the audited (and
    C2PA-signed) images wait in the spool; `resume` stores exactly those bytes."""
    from ldm_batch import progress
    from ldm_batch.embedded_s3 import embedded_s3

    home, port = tmp_path / "s3-home", free_base_port()
    server_block = embedded_s3(home, port)
    server = server_block.__enter__()
    for name, value in {"LDM_BATCH_S3_ENDPOINT_URL": server.endpoint_url,
                        "LDM_BATCH_S3_ACCESS_KEY_ID": server.access_key_id,
                        "LDM_BATCH_S3_SECRET_ACCESS_KEY": server.secret_access_key,
                        "LDM_BATCH_HOME": str(tmp_path / "home")}.items():
        monkeypatch.setenv(name, value)
    stopped = []

    def stop_s3_before_generation(event, n):
        if event == "planned":
            stopped.append(True)
            server_block.__exit__(None, None, None)

    stop_listening = progress.listen(stop_s3_before_generation)
    try:
        result = run_sheet(tmp_path, campaign="outage")
    finally:
        stop_listening()
    assert stopped and result.exit_code == 1
    assert "wait in the local spool" in result.output and "ldm-batch resume" in result.output

    log = AuditLog(settings.audit_url)
    records = log.query(campaign="outage", kind="image")
    spool = tmp_path / "home" / "spool"
    spooled = sorted(str(p.relative_to(spool)) for p in spool.rglob("*.png"))
    assert sorted(r["image_key"] for r in records) == spooled and len(spooled) == 3
    run_id = records[0]["run_id"]

    with embedded_s3(home, port):  # S3 is back
        resumed = CliRunner().invoke(app, ["resume", run_id, "--json"])
        assert resumed.exit_code == 0, resumed.output
        assert json.loads(resumed.stdout) == {"uploaded": len(spooled), "dropped": 0, "missing": []}
        store = ObjectStore(Settings())
        for record in records:  # the very bytes that were audited and signed: nothing regenerated
            assert hashlib.sha256(store.get(record["s3_key"])).hexdigest() == record["image_sha256"]
        assert not list(spool.rglob("*.png"))
        verified = CliRunner().invoke(app, ["audit", "verify", "--objects", "--json"])
        assert verified.exit_code == 0, verified.output


def test_production_models_without_a_signing_key_are_warned_about(policies, tmp_path, monkeypatch):
    from conftest import REPO
    from ldm_batch.config import load_settings
    from ldm_batch.provenance import unsigned_production_models

    monkeypatch.delenv("LDM_BATCH_C2PA_CERTIFICATE", raising=False)
    unsigned = Marker(policies.provenance, Settings())
    (warning,) = unsigned_production_models({"sd-1.5", "demo-tiny-sd"}, policies, unsigned)
    assert "'sd-1.5' runs without a C2PA signing key" in warning and "LDM_BATCH_C2PA_CERTIFICATE" in warning
    assert unsigned_production_models({"demo-tiny-sd"}, policies, unsigned) == []  # the demo kit's own model
    production = load_settings(REPO / "examples" / "production.yaml")
    assert production.c2pa_certificate and production.c2pa_private_key and production.c2pa_trust_anchors


def test_signing_with_a_key_leaves_nothing_to_warn_about(policies, signing):
    from ldm_batch.provenance import unsigned_production_models

    assert unsigned_production_models({"sd-1.5"}, policies, Marker(policies.provenance, Settings())) == []
