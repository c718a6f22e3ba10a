"""Model families beyond SD 1.x, as tiny random-weight pipelines built offline the way diffusers'
own tests build theirs (ldm_batch.demo_kit.tiny_families): SDXL (two text encoders, pooled embeddings), SD3 (an MMDiT transformer,
no UNet) saved without its optional T5 encoder as users often do, Flux.1 (CLIP + T5, a rotary
transformer) and PixArt-Sigma (T5 only, a DiT). Each is registered in a copy of the catalog with
its sha256, SDXL and Flux with a brand LoRA, and a sheet mixing rows with and without the brand
runs through the whole flow: generation, screens, audit, and `audit reproduce`."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from conftest import REPO
from ldm_batch.audit import AuditLog
from ldm_batch.catalog import weights_sha256
from ldm_batch.cli import app
from ldm_batch.demo_kit.tiny_families import (build_tiny_flux, build_tiny_lora, build_tiny_pixart, build_tiny_sd3,
                                              build_tiny_sdxl, kohya_copy)
from ldm_batch.storage import ObjectStore

# model id -> (builder, catalog fields beyond the common ones, whether a brand LoRA is added)
FAMILIES = {
    "tiny-sdxl": (build_tiny_sdxl, {}, True),  # its LoRA as a Kohya file too (brand `kohya`)
    # SD 3.5's license terms: commercial use under a revenue threshold, an attribution notice
    "tiny-sd3": (build_tiny_sd3, {"license": {"id": "Stability-AI-Community-License", "commercial_use": True,
                                              "revenue_limit_usd": 1_000_000, "attribution": "Powered by Stability AI"}},
                 False),
    "tiny-flux": (build_tiny_flux, {"call_options": {"max_sequence_length": 64}}, True),
    "tiny-pixart": (build_tiny_pixart, {"call_options": {"use_resolution_binning": False, "max_sequence_length": 64}},
                    False),
}
LICENSE = {"id": "Apache-2.0", "url": "https://www.apache.org/licenses/LICENSE-2.0", "commercial_use": True}


@pytest.fixture(params=sorted(FAMILIES))
def family_catalog(request, tmp_path, monkeypatch):
    """A copy of the policies with one tiny pipeline registered (local folder, sha256 pinned), and
    the brand `house` with a LoRA trained on it where the family has one; yields the model id."""
    model_id = request.param
    build, fields, with_lora = FAMILIES[model_id]
    policies = tmp_path / "policies"
    shutil.copytree(REPO / "policies", policies)
    build(policies / "models" / model_id)
    catalog = yaml.safe_load((policies / "models.yaml").read_text())
    catalog["local_weights_roots"].append("models")
    catalog["models"].append({
        "id": model_id, "kind": "diffusion", "source": f"./models/{model_id}", "revision": "test-build",
        "sha256": weights_sha256(policies / "models" / model_id), "license": LICENSE,
        "defaults": {"width": 32, "height": 32, "steps": 4, "guidance": 5.0}, **fields})
    (policies / "models.yaml").write_text(yaml.safe_dump(catalog, sort_keys=False))
    if with_lora:
        lora = policies / "loras" / f"{model_id}-house"
        build_tiny_lora(policies / "models" / model_id, lora)
        (policies / "brands" / "house.yaml").write_text(yaml.safe_dump({"id": "house", "loras": [{
            "id": f"{model_id}-house", "source": f"./loras/{model_id}-house", "sha256": weights_sha256(lora),
            "base_model": model_id, "license": LICENSE}]}))
        if model_id == "tiny-sdxl":
            kohya_copy(lora, policies / "loras" / "house-kohya.safetensors")
            (policies / "brands" / "kohya.yaml").write_text(yaml.safe_dump({"id": "kohya", "loras": [{
                "id": "house-kohya", "source": "./loras/house-kohya.safetensors", "base_model": model_id,
                "sha256": weights_sha256(policies / "loras" / "house-kohya.safetensors"), "license": LICENSE}]}))
    monkeypatch.setenv("LDM_BATCH_POLICIES_DIR", str(policies))
    monkeypatch.setenv("LDM_BATCH_ORGANISATION_REVENUE_USD", "250000")  # under SD 3.5's threshold
    return model_id


def test_each_family_runs_through_the_flow_with_its_lora_and_reproduces(prefect_harness, settings, family_catalog,
                                                                    tmp_path):
    with_lora = FAMILIES[family_catalog][2]
    sheet = tmp_path / "family.csv"
    sheet.write_text("asset_id,prompt,brand,model,variants,seed\n"
                     f"plain,a red circle on a white background,,{family_catalog},2,11\n"
                     + (f"branded,a red circle on a white background,house,{family_catalog},2,11\n" if with_lora else "")
                     + (f"kohya,a red circle on a white background,kohya,{family_catalog},2,11\n"
                        if family_catalog == "tiny-sdxl" else ""))
    result = CliRunner().invoke(app, ["run", str(sheet), "--campaign", "family", "--json"])
    assert result.exit_code == 0, result.output
    images = (6 if family_catalog == "tiny-sdxl" else 4) if with_lora else 2
    summary = json.loads(result.stdout.splitlines()[-1])
    assert summary["images_generated"] == images and summary["images_failed"] == 0
    records = AuditLog(settings.audit_url).query(campaign="family", kind="image")
    assert {r["model_id"] for r in records} == {family_catalog} and len(records) == images
    assert records[0]["runtime"]["attention"]  # read from the denoiser, a UNet or a transformer
    assert len({r["image_sha256"] for r in records}) == images  # a generator per image
    checked = records[1:2]
    attribution = (catalog_license := FAMILIES[family_catalog][1].get("license", {})).get("attribution")
    stored = json.loads(Image.open(io.BytesIO(ObjectStore(settings).get(records[0]["s3_key"]))).info["ldm-batch"])
    assert stored.get("attribution") == ([attribution] if attribution else None)  # the license's notice travels
    assert records[0]["model_license"]["id"] == catalog_license.get("id", "Apache-2.0")
    if with_lora:
        branded = [r for r in records if r["brand"] == "house"]
        assert [lora["id"] for lora in branded[0]["loras"]] == [f"{family_catalog}-house"]
        plain_pixels = {r["seed"]: r["pixels_sha256"] for r in records if r["brand"] is None}
        assert all(plain_pixels.get(r["seed"]) != r["pixels_sha256"] for r in branded)  # the LoRA acts
        checked.append(branded[-1])
    if family_catalog == "tiny-sdxl":  # the Kohya file is the same LoRA: the same pixels
        kohya = {r["seed"]: r["pixels_sha256"] for r in records if r["brand"] == "kohya"}
        assert kohya == {r["seed"]: r["pixels_sha256"] for r in branded}
    for record in checked:
        reproduced = CliRunner().invoke(app, ["audit", "reproduce", record["image_key"], "--json"])
        assert reproduced.exit_code == 0, reproduced.output
        assert json.loads(reproduced.stdout)["identical"]


def test_a_hub_model_at_a_moving_revision_is_refused_before_generation(prefect_harness, settings, tmp_path):
    """The catalog's SDXL entry names `revision: main`: a run in March and a rerun in June could
    use different weights, so it is refused with what to change, and nothing is generated."""
    sheet = tmp_path / "xl.csv"
    sheet.write_text("asset_id,prompt,model\nxl-1,a red circle on a white background,sdxl-base-1.0\n")
    result = CliRunner().invoke(app, ["run", str(sheet), "--campaign", "xl", "--json"])
    assert result.exit_code == 2, result.output
    error = json.loads(result.stdout.splitlines()[-1])
    assert error["refused"] == "weights"
    assert "stabilityai/stable-diffusion-xl-base-1.0: a hub id must be pinned to a commit" in error["error"]
    assert "revision 'main'" in error["error"]
    assert AuditLog(settings.audit_url).query(campaign="xl", kind="image") == []
