"""Model families beyond SD 1.x, as tiny random-weight pipelines built offline the way diffusers'
own tests build theirs (ldm_batch.demo_kit.tiny_families): SDXL (two text encoders, pooled embeddings), SD3 (an MMDiT transformer,
no UNet) saved without its optional T5 encoder as users often do, Flux.1 (CLIP + T5, a rotary
transformer) and PixArt-Sigma (T5 only, a DiT). All are registered in one copy of the catalog with
their sha256, SDXL and Flux with a brand LoRA each (SDXL's also as Kohya files), and one sheet with
a row per family, with and without the brands, runs through the whole flow: generation, screens,
audit, and `audit reproduce`. Then single-file checkpoints, LoRA hotswap and unpinned hub ids."""

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
                                              build_tiny_sdxl, kohya_copy, kohya_sgm_copy)
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


def _catalog_with(policies: Path, *entries: dict) -> None:
    catalog = yaml.safe_load((policies / "models.yaml").read_text())
    catalog["local_weights_roots"].append("models")
    catalog["models"] += [{"kind": "diffusion", "revision": "test-build", "license": LICENSE,
                           "defaults": {"width": 32, "height": 32, "steps": 4, "guidance": 5.0}, **entry}
                          for entry in entries]
    (policies / "models.yaml").write_text(yaml.safe_dump(catalog, sort_keys=False))


def _brand(policies: Path, brand: str, lora_id: str, source: str, base_model: str) -> None:
    (policies / "brands" / f"{brand}.yaml").write_text(yaml.safe_dump({"id": brand, "loras": [{
        "id": lora_id, "source": f"./{source}", "sha256": weights_sha256(policies / source), "base_model": base_model,
        "license": LICENSE}]}))


@pytest.fixture
def families_catalog(tmp_path, monkeypatch):
    """A copy of the policies with every tiny pipeline registered (local folders, sha256 pinned),
    and for SDXL and Flux the brand `house-<model>` with a LoRA trained on it; SDXL's LoRA also as
    Kohya files with diffusers block names (brand `kohya`) and with SGM's (brand `sgm`)."""
    policies = tmp_path / "policies"
    shutil.copytree(REPO / "policies", policies)
    entries = []
    for model_id, (build, fields, with_lora) in FAMILIES.items():
        build(policies / "models" / model_id)
        entries.append({"id": model_id, "source": f"./models/{model_id}",
                        "sha256": weights_sha256(policies / "models" / model_id), **fields})
        if with_lora:
            build_tiny_lora(policies / "models" / model_id, policies / "loras" / f"{model_id}-house")
    _catalog_with(policies, *entries)
    for model_id, (_, _, with_lora) in FAMILIES.items():
        if with_lora:
            _brand(policies, f"house-{model_id}", f"{model_id}-house", f"loras/{model_id}-house", model_id)
    sdxl_lora = policies / "loras" / "tiny-sdxl-house"
    kohya_copy(sdxl_lora, policies / "loras" / "house-kohya.safetensors")
    kohya_sgm_copy(policies / "models" / "tiny-sdxl", sdxl_lora, policies / "loras" / "house-sgm.safetensors")
    for name in ("kohya", "sgm"):
        _brand(policies, name, f"house-{name}", f"loras/house-{name}.safetensors", "tiny-sdxl")
    monkeypatch.setenv("LDM_BATCH_POLICIES_DIR", str(policies))
    monkeypatch.setenv("LDM_BATCH_ORGANISATION_REVENUE_USD", "250000")  # under SD 3.5's threshold


def test_a_sheet_with_a_row_per_family_runs_through_the_flow_with_loras_and_reproduces(
        prefect_harness, settings, families_catalog, tmp_path):
    prompt = "a red circle on a white background"
    rows = [f"plain-{m},{prompt},,{m},2,11" for m in FAMILIES]
    rows += [f"branded-{m},{prompt},house-{m},{m},2,11" for m, (_, _, with_lora) in FAMILIES.items() if with_lora]
    rows += [f"{b},{prompt},{b},tiny-sdxl,2,11" for b in ("kohya", "sgm")]
    sheet = tmp_path / "families.csv"
    sheet.write_text("asset_id,prompt,brand,model,variants,seed\n" + "\n".join(rows) + "\n")
    result = CliRunner().invoke(app, ["run", str(sheet), "--campaign", "family", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.splitlines()[-1])
    assert summary["images_generated"] == 2 * len(rows) and summary["images_failed"] == 0
    records = AuditLog(settings.audit_url).query(campaign="family", kind="image")
    assert len({r["image_sha256"] for r in records}) == 2 * len(rows)  # a generator per image
    store = ObjectStore(settings)
    checked = []
    for model_id, (_, fields, with_lora) in FAMILIES.items():
        mine = [r for r in records if r["model_id"] == model_id]
        plain = {r["seed"]: r["pixels_sha256"] for r in mine if r["brand"] is None}
        assert len(plain) == 2 and mine[0]["runtime"]["attention"]  # read from the denoiser: a UNet or a transformer
        license = fields.get("license", LICENSE)
        assert mine[0]["model_license"]["id"] == license["id"]
        stored = json.loads(Image.open(io.BytesIO(store.get(mine[0]["s3_key"]))).info["ldm-batch"])
        attribution = license.get("attribution")
        assert stored.get("attribution") == ([attribution] if attribution else None), model_id  # the notice travels
        checked.append(mine[0])
        if with_lora:
            branded = [r for r in mine if r["brand"] == f"house-{model_id}"]
            assert [lora["id"] for lora in branded[0]["loras"]] == [f"{model_id}-house"]
            assert all(plain[r["seed"]] != r["pixels_sha256"] for r in branded)  # the LoRA acts
            checked.append(branded[-1])
    house = {r["seed"]: r["pixels_sha256"] for r in records if r["brand"] == "house-tiny-sdxl"}
    for name in ("kohya", "sgm"):  # the Kohya files are the same LoRA: the same pixels
        assert {r["seed"]: r["pixels_sha256"] for r in records if r["brand"] == name} == house, name
    for record in checked:
        reproduced = CliRunner().invoke(app, ["audit", "reproduce", record["image_key"], "--json"])
        assert reproduced.exit_code == 0, reproduced.output
        assert json.loads(reproduced.stdout)["identical"], record["asset_id"]


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


def test_a_single_file_sdxl_checkpoint_runs_with_its_named_configs_and_reproduces(prefect_harness, settings,
                                                                                 tmp_path, monkeypatch):
    """SDXL as users download it: one .safetensors in Stability's original key layout, which does
    not say its architecture; the catalog entry names the family's configs (a pinned folder). Its
    weights load equal to the diffusers folder's, a Kohya LoRA applies, and images reproduce."""
    import torch
    from diffusers import StableDiffusionXLPipeline

    from ldm_batch.catalog import file_digests, folder_sha256
    from ldm_batch.demo_kit.tiny_families import single_file_copy
    from ldm_batch.generate import load_pipeline
    from ldm_batch.policies import load_policies

    policies = tmp_path / "policies"
    shutil.copytree(REPO / "policies", policies)
    models = policies / "models"
    build_tiny_sdxl(models / "xl-folder")
    single_file_copy(models / "xl-folder", models / "xl.safetensors", models / "xl-configs")
    build_tiny_lora(models / "xl-folder", policies / "loras" / "xl-house")
    kohya_copy(policies / "loras" / "xl-house", policies / "loras" / "xl-house.safetensors")
    file_entry = {"id": "xl-file", "source": "./models/xl.safetensors", "sha256": weights_sha256(models / "xl.safetensors"),
                  "config": "./models/xl-configs", "config_sha256": folder_sha256(file_digests(models / "xl-configs"))}
    _catalog_with(policies, file_entry, {"id": "xl-no-configs", "source": "./models/xl.safetensors",
                                         "sha256": file_entry["sha256"]})
    _brand(policies, "house", "xl-house-kohya", "loras/xl-house.safetensors", "xl-file")
    monkeypatch.setenv("LDM_BATCH_POLICIES_DIR", str(policies))

    catalog = load_policies(policies).models
    pipe, _ = load_pipeline(catalog["xl-file"], torch.float32)
    folder = StableDiffusionXLPipeline.from_pretrained(models / "xl-folder")
    for part in ("unet", "vae", "text_encoder", "text_encoder_2"):
        mine, theirs = getattr(pipe, part).state_dict(), getattr(folder, part).state_dict()
        assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine), part

    sheet = tmp_path / "file.csv"
    sheet.write_text("asset_id,prompt,brand,model,variants,seed\n"
                     "plain,a red circle on a white background,,xl-file,1,5\n"
                     "branded,a red circle on a white background,house,xl-file,1,5\n")
    result = CliRunner().invoke(app, ["run", str(sheet), "--campaign", "single-file", "--json"])
    assert result.exit_code == 0, result.output
    records = AuditLog(settings.audit_url).query(campaign="single-file", kind="image")
    assert {r["model_sha256"] for r in records} == {file_entry["sha256"]} and len(records) == 2
    assert records[0]["pixels_sha256"] != records[1]["pixels_sha256"]  # the Kohya LoRA acts on the file's UNet
    for record in records:
        reproduced = CliRunner().invoke(app, ["audit", "reproduce", record["image_key"], "--json"])
        assert reproduced.exit_code == 0 and json.loads(reproduced.stdout)["identical"], reproduced.output

    # without its configs a single file is refused with what to add, and nothing is generated
    sheet.write_text("asset_id,prompt,model\nbare,a red circle on a white background,xl-no-configs\n")
    result = CliRunner().invoke(app, ["run", str(sheet), "--campaign", "bare-file", "--json"])
    assert result.exit_code != 0
    assert "single-file checkpoint; name its family's diffusers configs" in result.output
    assert not [r for r in AuditLog(settings.audit_url).query(campaign="bare-file", kind="image")
                if r["status"] != "failed"]
    # changed configs are refused like changed weights
    (models / "xl-configs" / "scheduler" / "scheduler_config.json").write_text('{"_class_name": "DDIMScheduler"}')
    with pytest.raises(Exception, match="configs sha256 .* does not match the catalog's config_sha256"):
        load_pipeline(load_policies(policies).models["xl-file"], torch.float32)


def test_lora_hotswap_switches_brands_in_one_slot_with_the_pixels_of_set_adapters(tmp_path):
    """gpu.lora_hotswap_rank: brands replace one adapter's weights in place (so a compiled
    denoiser is not recompiled on GPU); the images are those of the usual one-adapter-per-brand way."""
    import numpy as np

    from ldm_batch.generate import ImageGenerator
    from ldm_batch.plan import group_batches, plan_row
    from ldm_batch.policies import load_policies
    from ldm_batch.sheets import PromptRow

    policies = tmp_path / "policies"
    shutil.copytree(REPO / "policies", policies)
    build_tiny_sdxl(policies / "models" / "xl")
    sha = weights_sha256(policies / "models" / "xl")
    _catalog_with(policies, {"id": "xl", "source": "./models/xl", "sha256": sha},
                  {"id": "xl-swap", "source": "./models/xl", "sha256": sha, "gpu": {"lora_hotswap_rank": 8}})
    for seed, brand in ((1, "acme2"), (2, "globex2")):
        build_tiny_lora(policies / "models" / "xl", policies / "loras" / brand, seed=seed)
        for model in ("xl", "xl-swap"):
            _brand(policies, f"{brand}-{model}", f"{brand}-{model}", f"loras/{brand}", model)
    loaded = load_policies(policies)

    def images(model: str) -> tuple[list, ImageGenerator]:
        generator, out = ImageGenerator(loaded, "cpu"), []
        for brand in ("acme2", "globex2", "acme2", ""):
            row = PromptRow(row=2, asset_id=f"a{brand}", prompt="a red circle", brand=f"{brand}-{model}" if brand else None,
                           model=model, variants=1, seed=3)
            for batch in group_batches(plan_row(row, "c", loaded), 1):
                out += [np.asarray(g.image, dtype=np.int16) for g in generator.generate(batch)]
        return out, generator

    usual, _ = images("xl")
    swapped, generator = images("xl-swap")
    assert generator.loads["lora:acme2-xl-swap"] == 2  # swapped back in, in the one slot
    assert len(generator.pipeline("xl-swap")[0].get_list_adapters()["unet"]) == 1
    assert not np.array_equal(usual[0], usual[1])  # the brands differ
    for a, b in zip(usual, swapped):
        assert np.abs(a - b).max() <= 2  # rank padding changes only the last bits of the sums
