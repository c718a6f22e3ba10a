"""Brand LoRA training end to end: images in, a registered LoRA out, a campaign row of the
brand made with it, and its images linked to the LoRA's training manifest."""

from __future__ import annotations

import hashlib
import json
import random
import re
import shutil

import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import REPO
from ldm_batch.audit import AuditLog
from ldm_batch.cli import app
from ldm_batch.demo_kit.world import all_scenes, caption, draw, tint
from ldm_batch.policies import load_policies

PURPLE = (150, 40, 200)


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def brand_images(folder, n: int, seed: int = 0) -> None:
    """n demo-world scenes tinted toward the new brand's purple, each with a caption sidecar."""
    folder.mkdir()
    rng = random.Random(seed)
    for i, scene in enumerate(rng.choices(all_scenes(), k=n)):
        tint(draw(scene, rng), PURPLE, 0.45).save(folder / f"img{i:03d}.png")
        (folder / f"img{i:03d}.txt").write_text(caption(scene, rng))


@pytest.fixture
def policies_copy(tmp_path, monkeypatch):
    target = tmp_path / "policies"
    shutil.copytree(REPO / "policies", target)
    monkeypatch.setenv("LDM_BATCH_POLICIES_DIR", str(target))
    return target


def test_trained_brand_lora_is_registered_used_and_traceable(prefect_harness, settings, policies_copy, tmp_path):
    images = tmp_path / "initech"
    brand_images(images, 24)
    result = cli("brand", "train", "initech", "--images", images, "--license", "proprietary",
                 "--rights-holder", "Initech Inc.", "--steps", 30, "--rank", 4, "--trigger", "initechstyle", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["training_images"] == 24 and summary["base_model"] == "demo-tiny-sd"

    (lora,) = load_policies(policies_copy).brands["initech"].loras
    assert (lora.trigger, lora.license.id, lora.sha256) == ("initechstyle", "proprietary", summary["lora_sha256"])
    out = policies_copy / "loras" / "initech" / lora.id
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(i["sha256"] for i in manifest["training_images"]) == sorted(
        hashlib.sha256(p.read_bytes()).hexdigest() for p in images.glob("*.png"))
    assert manifest["images_rights"]["rights_holder"] == "Initech Inc."
    assert manifest["base_model_sha256"] == load_policies(policies_copy).models["demo-tiny-sd"].sha256
    assert Image.open(out / "loss.png").size == (600, 300) and Image.open(out / "samples.png").width > 0
    assert not (out / "checkpoint.pt").exists()

    sheet = tmp_path / "brand.csv"
    sheet.write_text("asset_id,prompt,brand\ni-1,a red circle on a white background,initech\n")
    run = cli("run", sheet, "--campaign", "initech-launch", "--json")
    assert run.exit_code == 0, run.output
    (record,) = AuditLog(settings.audit_url).query(kind="image", campaign="initech-launch")
    assert record["prompt"] == "initechstyle a red circle on a white background"
    (used,) = record["loras"]
    assert used["id"] == lora.id and used["sha256"] == lora.sha256
    assert used["manifest_sha256"] == hashlib.sha256((out / "manifest.json").read_bytes()).hexdigest()
    explained = cli("audit", "explain", record["image_key"])
    assert "manifest" in explained.output and "training" in explained.output


def test_bad_training_images_are_refused_with_every_problem(settings, policies_copy, tmp_path):
    images = tmp_path / "bad"
    brand_images(images, 3)
    Image.new("RGB", (8, 8)).save(images / "tiny.png")
    shutil.copy(images / "img000.png", images / "zcopy.png")
    (images / "broken.png").write_bytes(b"not an image")
    (images / "img001.txt").write_text("a graphic photo of a bloody corpse")
    result = cli("brand", "train", "initech", "--images", images, "--license", "proprietary",
                 "--rights-holder", "Initech Inc.", "--json")
    assert result.exit_code == 2
    problems = [f"{p['file']}: {p['message']}" for p in json.loads(result.stdout.strip().splitlines()[-1])["errors"]]
    assert any(p.startswith("tiny.png: 8x8 is smaller") for p in problems)
    assert any(p.startswith("zcopy.png: the same image as img000.png") for p in problems)
    assert any(p.startswith("broken.png: not a readable image") for p in problems)
    assert any(p.startswith("img001.png: caption") and "refused by the text screen" in p for p in problems)
    assert any("the policy needs at least 20" in p for p in problems)
    assert not (policies_copy / "brands" / "initech.yaml").exists()


def test_a_lora_trained_on_another_base_model_is_refused(prefect_harness, settings, policies_copy, tmp_path):
    acme = policies_copy / "brands" / "acme.yaml"
    acme.write_text(re.sub(r"base_model: demo-tiny-sd", "base_model: sd-1.5", acme.read_text()))
    sheet = tmp_path / "acme.csv"
    sheet.write_text("asset_id,prompt,brand\na-1,a red circle on a white background,acme\n")
    result = cli("run", sheet, "--campaign", "base", "--json")
    assert result.exit_code == 2
    assert "trained on 'sd-1.5', not on 'demo-tiny-sd'" in json.loads(result.stdout.strip().splitlines()[-1])["error"]


def test_an_interrupted_training_resumes_from_its_checkpoint(policies_copy, tmp_path):
    from ldm_batch.brand_training import collect_images, load_base, train_lora
    from ldm_batch.safety.text import TextScreen

    policies = load_policies(policies_copy)
    policy = policies.brand_training.model_copy(update={"min_images": 4, "checkpoint_every": 4, "batch_size": 4})
    brand_images(tmp_path / "images", 6)
    images = collect_images(tmp_path / "images", None, policy, TextScreen(policies, policies_copy), "initech")
    checkpoint = tmp_path / "checkpoint.pt"

    def stop_at_step_6(step, loss):
        if step == 6:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_lora(load_base(policies, "demo-tiny-sd", "cpu")[0], images, None, 4, 10, 32, policy, checkpoint,
                   stop_at_step_6)
    assert checkpoint.exists()  # written at step 4
    steps_run = []
    losses = train_lora(load_base(policies, "demo-tiny-sd", "cpu")[0], images, None, 4, 10, 32, policy, checkpoint,
                        lambda step, loss: steps_run.append(step))
    assert steps_run == [5, 6, 7, 8, 9, 10] and len(losses) == 10
