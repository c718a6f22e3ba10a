"""Governance: licenses checked before generation, lineage and reproduction from the audit
log, provenance in every delivered PNG, safe exports, migrations both ways."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess

import pytest
import torch
from PIL import Image
from sd_parsers import ParserManager
from typer.testing import CliRunner

from conftest import REPO
from ldm_batch.audit import AuditLog
from ldm_batch.cli import app
from ldm_batch.storage import ObjectStore
from ldm_batch.torch_thread import on_torch_thread

SMALL = str(REPO / "examples" / "campaign_small.csv")


@pytest.fixture
def campaign_run(prefect_harness, settings):
    from flows.campaign_batch import campaign_batch

    return campaign_batch(sheet=SMALL, campaign="gov")


def test_non_commercial_model_is_refused_for_a_commercial_campaign(prefect_harness, settings, tmp_path):
    sheet = tmp_path / "turbo.csv"
    sheet.write_text("asset_id,prompt,model\nfast-1,a red circle,sd-turbo\nok-1,a blue square,\n")
    result = CliRunner().invoke(app, ["run", str(sheet), "--campaign", "turbo", "--json"])
    assert result.exit_code == 2, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert [(e["row"], e["column"]) for e in report["errors"]] == [(1, "model")]
    assert "does not allow commercial use" in report["errors"][0]["message"]
    records = AuditLog(settings.audit_url).query(campaign="turbo")
    assert [(r["asset_id"], r["decision"], r["use"]) for r in records] == [("fast-1", "blocked", "commercial")]
    assert "Non-Commercial" in records[0]["reasons"][0]
    assert ObjectStore(settings).image_keys() == []  # refused before any generation


def test_non_commercial_lora_is_refused_for_a_commercial_campaign(prefect_harness, settings, tmp_path, monkeypatch):
    import shutil

    policies = tmp_path / "policies"
    shutil.copytree(REPO / "policies", policies)
    acme = policies / "brands" / "acme.yaml"
    acme.write_text(acme.read_text().replace(
        "license: {id: Apache-2.0, url: https://www.apache.org/licenses/LICENSE-2.0, commercial_use: true}",
        "license: {id: CC-BY-NC-4.0, url: https://creativecommons.org/licenses/by-nc/4.0/, commercial_use: false}"))
    monkeypatch.setenv("LDM_BATCH_POLICIES_DIR", str(policies))
    sheet = tmp_path / "brands.csv"
    sheet.write_text("asset_id,prompt,brand\nplain-1,a red circle,\nacme-1,a blue square,acme\n")

    result = CliRunner().invoke(app, ["run", str(sheet), "--campaign", "nc", "--json"])
    assert result.exit_code == 2, result.output
    (error,) = json.loads(result.stdout.strip().splitlines()[-1])["errors"]
    assert (error["row"], error["column"]) == (2, "brand")
    assert "LoRA 'acme-style' is licensed under CC-BY-NC-4.0" in error["message"]
    assert ObjectStore(settings).image_keys() == []

    allowed = CliRunner().invoke(app, ["run", str(sheet), "--campaign", "nc", "--use", "non-commercial", "--json"])
    assert allowed.exit_code == 0, allowed.output
    image = AuditLog(settings.audit_url).query(campaign="nc", kind="image", brand="acme")[0]
    assert (image["use"], image["loras"][0]["license"]["id"]) == ("non-commercial", "CC-BY-NC-4.0")


def test_every_delivered_png_carries_its_provenance(campaign_run, settings):
    store = ObjectStore(settings)
    for record in AuditLog(settings.audit_url).query(run_id=campaign_run.run_id, kind="image"):
        image = Image.open(io.BytesIO(store.get(record["s3_key"])))
        parameters = json.loads(image.info["ldm-batch"])
        assert (parameters["prompt"], parameters["seed"]) == (record["prompt"], record["seed"])
        assert parameters["model_sha256"] == record["model_sha256"]
        # the "parameters" chunk in AUTOMATIC1111's format, read by a parser no one here wrote
        (sampler,) = ParserManager().parse(image).samplers
        assert [p.value for p in sampler.prompts] == [record["prompt"]]
        assert sampler.parameters["seed"] == str(record["seed"]) and sampler.parameters["steps"] == str(record["steps"])
        assert (sampler.name, sampler.model.name, sampler.model.hash) == (
            "DDIM", record["model_id"], record["model_sha256"][:10])
        assert "trainedAlgorithmicMedia" in image.info["XML:com.adobe.xmp"]


EXIFTOOL = shutil.which("exiftool")


@pytest.mark.skipif(not EXIFTOOL and not os.environ.get("LDM_BATCH_REQUIRE_EXIFTOOL"),
                    reason="exiftool is not installed (apt-get install libimage-exiftool-perl)")
def test_exiftool_reads_the_a1111_parameters_and_the_source_type(campaign_run, settings, tmp_path):
    record = AuditLog(settings.audit_url).query(run_id=campaign_run.run_id, kind="image", decision="delivered")[0]
    (tmp_path / "image.png").write_bytes(ObjectStore(settings).get(record["s3_key"]))
    tags = json.loads(subprocess.run([EXIFTOOL or "exiftool", "-j", str(tmp_path / "image.png")], check=True,
                                     capture_output=True, text=True).stdout)[0]
    prompt, *rest = tags["Parameters"].splitlines()
    assert prompt == record["prompt"] and f"Seed: {record['seed']}," in rest[-1]
    assert f"Model: {record['model_id']}," in rest[-1] and f"Steps: {record['steps']}," in rest[-1]
    assert tags["DigitalSourceType"].endswith("/trainedAlgorithmicMedia")
    assert json.loads(tags["Ldm-batch"])["seed"] == record["seed"]


def test_reproduce_from_the_audit_log_is_byte_identical(campaign_run, settings):
    record = AuditLog(settings.audit_url).query(asset_id="spring-01")[1]  # second variant
    assert record["batch_size"] == 2  # it reproduces only beside its batch mate, the first variant
    result = CliRunner().invoke(app, ["audit", "reproduce", record["image_sha256"], "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["identical"] and report["reproduced_sha256"] == record["image_sha256"]

    # how the numbers were computed is recorded, and reproduce uses the recorded CPU threads
    runtime = record["runtime"]
    assert (runtime["dtype"], runtime["compiled"]) == ("float32", False)
    assert runtime["attention"] == ["AttnProcessor2_0"]  # PyTorch scaled-dot-product attention
    threads = on_torch_thread(torch.get_num_threads)  # where generation runs
    on_torch_thread(torch.set_num_threads, 1 if runtime["cpu_threads"] > 1 else 2)
    try:
        again = json.loads(CliRunner().invoke(app, ["audit", "reproduce", record["image_sha256"], "--json"]).stdout)
    finally:
        on_torch_thread(torch.set_num_threads, threads)
    assert again["identical"] and again["notes"] == []


def test_explain_gives_one_images_lineage(campaign_run, settings):
    record = AuditLog(settings.audit_url).query(asset_id="spring-03")[0]
    result = CliRunner().invoke(app, ["audit", "explain", record["s3_key"], "--json"])
    assert result.exit_code == 0, result.output
    lineage = json.loads(result.stdout)
    assert lineage["image"]["image_sha256"] == record["image_sha256"]
    assert lineage["run"]["run_id"] == campaign_run.run_id and lineage["run"]["status"] == "finished"
    assert [lora["license"]["id"] for lora in lineage["image"]["loras"]] == ["Apache-2.0"]
    unknown = CliRunner().invoke(app, ["audit", "explain", "no-such-image"])
    assert unknown.exit_code == 2


def test_query_filters_by_brand_text_and_license(campaign_run, settings):
    def query(*args):
        result = CliRunner().invoke(app, ["audit", "query", "--format", "json", *args])
        assert result.exit_code == 0, result.output
        return [json.loads(line)["asset_id"] for line in result.stdout.splitlines()]

    assert sorted(query("--brand", "globex")) == ["spring-03"]
    assert sorted(query("--text", "YELLOW STAR")) == ["spring-05"]
    assert len(query("--license", "Apache-2.0", "--kind", "image")) == 5
    assert query("--license", "CreativeML-OpenRAIL-M") == []


def test_csv_export_defuses_spreadsheet_formulas(settings, tmp_path):
    from ldm_batch.audit.log import AuditRecord, now

    # a refused row keeps its prompt as written, formula and all

    log = AuditLog(settings.audit_url)
    log.migrate()
    log.append([AuditRecord(kind="row", run_id="r", campaign="c", sheet="formula.csv", sheet_row=1,
                            asset_id="f-1", decision="blocked", prompt='=HYPERLINK("http://x","corpse")',
                            text_verdict={}, created_at=now().isoformat())])
    out = tmp_path / "audit.csv"
    result = CliRunner().invoke(app, ["audit", "query", "--format", "csv", "--out", str(out)])
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert "'=HYPERLINK" in text and ",=HYPERLINK" not in text


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_migrations_upgrade_and_downgrade(backend, tmp_path, request):
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import inspect

    url = f"sqlite:///{tmp_path / 'm.db'}" if backend == "sqlite" else request.getfixturevalue("postgres_url")
    log = AuditLog(url)
    config = Config()
    config.set_main_option("script_location", str(REPO / "ldm_batch" / "audit" / "migrations"))
    with log.engine.connect() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0001")
        assert "batch_id" not in {c["name"] for c in inspect(connection).get_columns("audit_records")}
        command.upgrade(config, "head")
        assert "batch_id" in {c["name"] for c in inspect(connection).get_columns("audit_records")}
        assert {"lora_uses", "reviews"} <= set(inspect(connection).get_table_names())
        command.downgrade(config, "base")
        assert "audit_records" not in inspect(connection).get_table_names()
        connection.commit()
    log.engine.dispose()


def test_verify_objects_finds_a_changed_object(campaign_run, settings):
    assert CliRunner().invoke(app, ["audit", "verify", "--objects"]).exit_code == 0
    store = ObjectStore(settings)
    key = AuditLog(settings.audit_url).query(asset_id="spring-05")[0]["s3_key"]
    store.client.delete_object(Bucket=store.bucket, Key=key)
    store.client.put_object(Bucket=store.bucket, Key=key, Body=b"not the audited image")
    result = CliRunner().invoke(app, ["audit", "verify", "--objects", "--json"])
    assert result.exit_code == 1
    assert any("does not match its sha256" in p for p in json.loads(result.stdout)["problems"])


def test_verify_objects_finds_a_planted_object(campaign_run, settings):
    store = ObjectStore(settings)
    store.client.put_object(Bucket=store.bucket, Key="delivery/gov/planted/planted.png", Body=b"not ours")
    result = CliRunner().invoke(app, ["audit", "verify", "--objects", "--json"])
    assert result.exit_code == 1
    assert any("delivery/gov/planted/planted.png: no audit record accounts for this object" in p
               for p in json.loads(result.stdout)["problems"])
