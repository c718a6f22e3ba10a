"""A batch that fails for real (a brand LoRA file diffusers cannot load) after its retries:
its images are recorded as failed while the other batches finish, the run ends "partial"
(exit 1) with each failed image listed, and running the sheet again tries only those."""

from __future__ import annotations

import json
import shutil

import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from conftest import REPO
from ldm_batch.audit import AuditLog
from ldm_batch.catalog import weights_sha256
from ldm_batch.cli import app

SHEET = ("asset_id,prompt,brand,variants\n"
         "ok-1,a red circle on a white background,acme,1\n"
         "broken-1,a blue square on a yellow background,broken,2\n"
         "ok-2,a green triangle on a white background,,1\n")


def test_a_failing_batch_is_accounted_for_and_retried_alone(prefect_harness, settings, tmp_path, monkeypatch):
    policies = tmp_path / "policies"
    shutil.copytree(REPO / "policies", policies)
    lora = policies / "loras" / "broken" / "pytorch_lora_weights.safetensors"
    lora.parent.mkdir(parents=True)
    save_file({"unet.down_blocks.0.attentions.0.proj_in.lora_A.weight": torch.zeros(4, 3)}, str(lora))
    (policies / "brands" / "broken.yaml").write_text(
        "id: broken\nloras:\n  - id: broken-style\n    source: ./loras/broken/pytorch_lora_weights.safetensors\n"
        f"    sha256: {weights_sha256(lora)}\n    scale: 1.0\n    base_model: demo-tiny-sd\n"
        "    license: {id: Apache-2.0, commercial_use: true}\n")
    monkeypatch.setenv("LDM_BATCH_POLICIES_DIR", str(policies))
    sheet = tmp_path / "mixed.csv"
    sheet.write_text(SHEET)

    first = CliRunner().invoke(app, ["run", str(sheet), "--campaign", "mixed", "--json"])
    assert first.exit_code == 1, first.output
    summary = json.loads(first.stdout.strip().splitlines()[-1])
    assert summary["status"] == "partial" and summary["images_failed"] == 2
    assert summary["images_delivered"] + summary["images_blocked"] == 2  # the other batches finished
    assert {f["asset_id"] for f in summary["failures"]} == {"broken-1"}
    assert all("IndexError" in f["error"] for f in summary["failures"])
    log = AuditLog(settings.audit_url)
    failed = log.query(run_id=summary["run_id"], decision="failed")
    assert sorted(r["variant"] for r in failed) == [1, 2] and "generation failed" in failed[0]["reasons"][0]
    assert [r["status"] for r in log.runs()] == ["partial"]
    assert log.verify().ok

    again = CliRunner().invoke(app, ["run", str(sheet), "--campaign", "mixed", "--json"])
    rerun = json.loads(again.stdout.strip().splitlines()[-1])
    assert (rerun["images_reused"], rerun["images_generated"], rerun["images_failed"]) == (2, 0, 2)
