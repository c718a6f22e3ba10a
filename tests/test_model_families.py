"""Model families beyond SD 1.x, as tiny random-weight pipelines built offline the way diffusers'
own tests build theirs: SD3 (an MMDiT transformer, no UNet) saved without its optional T5
encoder as users often do, and Flux.1 (CLIP + T5, a transformer with rotary embeddings).
Each is registered in a copy of the catalog with its sha256 and run through the whole flow:
generation, screens, audit, and `audit reproduce`."""

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


def t5_tokenizer():
    """A small T5 (Unigram) tokenizer over the demo kit's words: T5's own needs a download."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import CLIPTokenizer, T5TokenizerFast

    clip = CLIPTokenizer.from_pretrained(DEMO_TOKENIZER)
    words = sorted({w[:-4] for w in clip.get_vocab() if w.endswith("</w>") and w[:-4].isalpha()})
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -3.0)] + \
        [("\u2581" + w, -5.0) for w in words] + [(c, -10.0) for c in "abcdefghijklmnopqrstuvwxyz"]
    unigram = Tokenizer(models.Unigram(vocab, unk_id=2))
    unigram.pre_tokenizer, unigram.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
    return T5TokenizerFast(tokenizer_object=unigram, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                           extra_ids=0)


def build_tiny_flux(folder: Path) -> None:
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, T5Config, T5EncoderModel

    tokenizer, tokenizer_2 = CLIPTokenizer.from_pretrained(DEMO_TOKENIZER), t5_tokenizer()
    torch.manual_seed(0)
    text = CLIPTextConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, hidden_size=32,
                          intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, vocab_size=len(tokenizer),
                          pad_token_id=tokenizer.pad_token_id or 0, hidden_act="gelu", projection_dim=32)
    t5 = T5Config(vocab_size=len(tokenizer_2), d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                  decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    FluxPipeline(
        transformer=FluxTransformer2DModel(patch_size=1, in_channels=4, num_layers=1, num_single_layers=1,
                                           attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                           pooled_projection_dim=32, axes_dims_rope=[4, 4, 8]),
        vae=AutoencoderKL(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4,), layers_per_block=1,
                          latent_channels=1, norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False,
                          shift_factor=0.0609, scaling_factor=1.5035),
        scheduler=FlowMatchEulerDiscreteScheduler(), text_encoder=CLIPTextModel(text), tokenizer=tokenizer,
        text_encoder_2=T5EncoderModel(t5), tokenizer_2=tokenizer_2,
    ).save_pretrained(folder, safe_serialization=True)


FAMILIES = {"tiny-sd3": build_tiny_sd3, "tiny-flux": build_tiny_flux}


@pytest.fixture(params=sorted(FAMILIES))
def family_catalog(request, tmp_path, monkeypatch):
    """A copy of the policies with one tiny pipeline registered (local folder, sha256 pinned);
    yields its model id."""
    model_id = request.param
    policies = tmp_path / "policies"
    shutil.copytree(REPO / "policies", policies)
    FAMILIES[model_id](policies / "models" / model_id)
    catalog = yaml.safe_load((policies / "models.yaml").read_text())
    catalog["local_weights_roots"].append("models")
    catalog["models"].append({
        "id": model_id, "kind": "diffusion", "source": f"./models/{model_id}", "revision": "test-build",
        "sha256": weights_sha256(policies / "models" / model_id),
        "license": {"id": "Apache-2.0", "url": "https://www.apache.org/licenses/LICENSE-2.0", "commercial_use": True},
        "defaults": {"width": 32, "height": 32, "steps": 4, "guidance": 5.0}})
    (policies / "models.yaml").write_text(yaml.safe_dump(catalog, sort_keys=False))
    monkeypatch.setenv("LDM_BATCH_POLICIES_DIR", str(policies))
    return model_id


def test_a_transformer_family_runs_through_the_flow_and_reproduces(prefect_harness, settings, family_catalog,
                                                                    tmp_path):
    sheet = tmp_path / "family.csv"
    sheet.write_text("asset_id,prompt,model,variants,seed\n"
                     f"dit,a red circle on a white background,{family_catalog},3,11\n")
    result = CliRunner().invoke(app, ["run", str(sheet), "--campaign", "family", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.splitlines()[-1])
    assert summary["images_generated"] == 3 and summary["images_failed"] == 0
    records = AuditLog(settings.audit_url).query(campaign="family", kind="image")
    assert {r["model_id"] for r in records} == {family_catalog} and len(records) == 3
    assert records[0]["scheduler"] == "FlowMatchEulerDiscreteScheduler"
    assert records[0]["runtime"]["attention"]  # read from the transformer: there is no UNet
    assert len({r["image_sha256"] for r in records}) == 3  # a generator per image
    reproduced = CliRunner().invoke(app, ["audit", "reproduce", records[1]["image_key"], "--json"])
    assert reproduced.exit_code == 0, reproduced.output
    assert json.loads(reproduced.stdout)["identical"]
