"""Model families beyond SD 1.x, as tiny random-weight pipelines built offline the way diffusers'
own tests build theirs: SDXL (two text encoders, pooled embeddings), SD3 (an MMDiT transformer,
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
from ldm_batch.storage import ObjectStore

DEMO_TOKENIZER = REPO / "ldm_batch" / "demo_kit" / "weights" / "demo-tiny-sd" / "tokenizer"


def clip_text_config(tokenizer):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, hidden_size=32,
                          intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, vocab_size=len(tokenizer),
                          pad_token_id=tokenizer.pad_token_id or 0, hidden_act="gelu", projection_dim=32)


def t5_config(tokenizer):
    from transformers import T5Config

    return T5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                    decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)


def build_tiny_sd3(folder: Path) -> None:
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(DEMO_TOKENIZER)
    torch.manual_seed(0)
    text = clip_text_config(tokenizer)
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
    from transformers import CLIPTextModel, CLIPTokenizer, T5EncoderModel

    tokenizer, tokenizer_2 = CLIPTokenizer.from_pretrained(DEMO_TOKENIZER), t5_tokenizer()
    torch.manual_seed(0)
    text = clip_text_config(tokenizer)
    t5 = t5_config(tokenizer_2)
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


def build_tiny_sdxl(folder: Path) -> None:
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(DEMO_TOKENIZER)
    torch.manual_seed(0)
    text = clip_text_config(tokenizer)
    StableDiffusionXLPipeline(
        unet=UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=4,
                                  out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                  up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
                                  use_linear_projection=True, addition_embed_type="text_time",
                                  addition_time_embed_dim=8, transformer_layers_per_block=(1, 2),
                                  projection_class_embeddings_input_dim=80, cross_attention_dim=64, norm_num_groups=1),
        vae=AutoencoderKL(block_out_channels=[32, 64], in_channels=3, out_channels=3, latent_channels=4,
                          down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2),
        scheduler=EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, steps_offset=1,
                                         beta_schedule="scaled_linear", timestep_spacing="leading"),
        text_encoder=CLIPTextModel(text), tokenizer=tokenizer, text_encoder_2=CLIPTextModelWithProjection(text),
        tokenizer_2=tokenizer,
    ).save_pretrained(folder, safe_serialization=True)


def build_tiny_pixart(folder: Path) -> None:
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, PixArtSigmaPipeline, PixArtTransformer2DModel
    from transformers import T5EncoderModel

    tokenizer = t5_tokenizer()
    torch.manual_seed(0)
    t5 = t5_config(tokenizer)
    PixArtSigmaPipeline(
        transformer=PixArtTransformer2DModel(sample_size=8, num_layers=2, patch_size=2, attention_head_dim=8,
                                             num_attention_heads=3, caption_channels=32, in_channels=4,
                                             cross_attention_dim=24, out_channels=8, attention_bias=True,
                                             activation_fn="gelu-approximate", num_embeds_ada_norm=1000,
                                             norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6),
        vae=AutoencoderKL(), scheduler=DDPMScheduler(), text_encoder=T5EncoderModel(t5), tokenizer=tokenizer,
    ).save_pretrained(folder, safe_serialization=True)


def build_tiny_lora(model: Path, folder: Path) -> None:
    """A random (non-zero) LoRA on the pipeline's denoiser, saved in diffusers' format."""
    import torch
    from diffusers import DiffusionPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    pipe = DiffusionPipeline.from_pretrained(model)
    torch.manual_seed(1)
    name = "unet" if getattr(pipe, "unet", None) is not None else "transformer"
    denoiser = getattr(pipe, name)
    denoiser.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                                    target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    type(pipe).save_lora_weights(folder, **{f"{name}_lora_layers": get_peft_model_state_dict(denoiser)})


def kohya_copy(lora: Path, file: Path) -> None:
    """The same LoRA as one Kohya-format file (lora_unet_... keys, lora_down/lora_up, alpha)."""
    from diffusers.utils import convert_state_dict_to_kohya
    from safetensors.torch import load_file, save_file

    save_file(convert_state_dict_to_kohya(load_file(lora / "pytorch_lora_weights.safetensors")), file)


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
