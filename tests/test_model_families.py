"""Model families beyond SD 1.x: a tiny random-weight SD3 pipeline (an MMDiT transformer, no UNet),
saved without its optional T5 encoder as users often do, built offline the way diffusers' own
tests build theirs, registered in a copy of the catalog with its sha256, and run through the
whole flow: generation, screens, audit, and `audit reproduce`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from conftest import REPO
from ldm_batch.audit import AuditLog
from ldm_batch.catalog import weights_sha256
from ldm_batch.cli import app

DEMO_TOKENIZER = REPO / "ldm_batch" / "demo_kit" / "weights" / "demo-tiny-sd" / "tokenizer"


def build_tiny_sd3(folder: Path) -> None:
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(DEMO_TOKENIZER)
    torch.manual_seed(0)
    text = CLIPTextConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, hidden_size=32,
                          intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, vocab_size=len(tokenizer),
                          pad_token_id=tokenizer.pad_token_id or 0, hidden_act="gelu", projection_dim=32)
    StableDiffusion3Pipeline(
        transformer=SD3Transformer2DModel(sample_size=32, patch_size=1, in_channels=4, num_layers=1,
                                          attention_head_dim=8, num_attention_heads=4, caption_projection_dim=32,
                                          joint_attention_dim=32, pooled_projection_dim=64, out_channels=4),
        vae=AutoencoderKL(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4,), layers_per_block=1,
                          latent_channels=4, norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False,
                          shift_factor=0.0609, scaling_factor=1.5035),
        scheduler=FlowMatchEulerDiscreteScheduler(), text_encoder=CLIPTextModelWithProjection(text),
        tokenizer=tokenizer, text_encoder_2=CLIPTextModelWithProjection(text), tokenizer_2=tokenizer,
        text_encoder_3=None, tokenizer_3=None,  # saved without T5: the catalog must still load it
    ).save_pretrained(folder, safe_serialization=True)


@pytest.fixture
def sd3_catalog(tmp_path, monkeypatch):
    """A copy of the policies with `tiny-sd3` registered (local folder, sha256 pinned)."""
    policies = tmp_path / "policies"
    shutil.copytree(REPO / "policies", policies)
    build_tiny_sd3(policies / "models" / "tiny-sd3")
    catalog = yaml.safe_load((policies / "models.yaml").read_text())
    catalog["local_weights_roots"].append("models")
    catalog["models"].append({
        "id": "tiny-sd3", "kind": "diffusion", "source": "./models/tiny-sd3", "revision": "test-build",
        "sha256": weights_sha256(policies / "models" / "tiny-sd3"),
        "license": {"id": "Apache-2.0", "url": "https://www.apache.org/licenses/LICENSE-2.0", "commercial_use": True},
        "defaults": {"width": 32, "height": 32, "steps": 4, "guidance": 5.0}})
    (policies / "models.yaml").write_text(yaml.safe_dump(catalog, sort_keys=False))
    monkeypatch.setenv("LDM_BATCH_POLICIES_DIR", str(policies))
    return policies


def test_an_sd3_pipeline_runs_through_the_flow_and_reproduces(prefect_harness, settings, sd3_catalog, tmp_path):
    sheet = tmp_path / "sd3.csv"
    sheet.write_text("asset_id,prompt,model,variants,seed\n"
                     "mmdit,a red circle on a white background,tiny-sd3,3,11\n")
    result = CliRunner().invoke(app, ["run", str(sheet), "--campaign", "sd3", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.splitlines()[-1])
    assert summary["images_generated"] == 3 and summary["images_failed"] == 0
    records = AuditLog(settings.audit_url).query(campaign="sd3", kind="image")
    assert {r["model_id"] for r in records} == {"tiny-sd3"} and len(records) == 3
    assert records[0]["scheduler"] == "FlowMatchEulerDiscreteScheduler"
    assert records[0]["runtime"]["attention"]  # read from the transformer: there is no UNet
    assert len({r["image_sha256"] for r in records}) == 3  # a generator per image
    reproduced = CliRunner().invoke(app, ["audit", "reproduce", records[1]["image_key"], "--json"])
    assert reproduced.exit_code == 0, reproduced.output
    assert json.loads(reproduced.stdout)["identical"]
