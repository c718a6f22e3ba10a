"""Tiny random-weight pipelines of each model family, built offline from configs the way
diffusers' own tests build theirs, for the tests and benches: SDXL (two text encoders, pooled
embeddings), SD3 (MMDiT, saved without its optional T5 encoder), Flux.1 (CLIP + T5, a rotary
transformer) and PixArt-Sigma (T5 only), and random LoRAs for them in diffusers and Kohya format.
Random weights make noise, but run the real architectures at the real cost per pixel.
"""

from __future__ import annotations

from pathlib import Path

DEMO_TOKENIZER = Path(__file__).parent / "weights" / "demo-tiny-sd" / "tokenizer"


def clip_text_config(tokenizer, hidden_size: int = 32):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                          hidden_size=hidden_size, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                          vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id or 0, hidden_act="gelu",
                          projection_dim=hidden_size)


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
    # two encoders of different widths, as SDXL's CLIP-L and OpenCLIP bigG (a single file tells them apart so)
    text, text_2 = clip_text_config(tokenizer), clip_text_config(tokenizer, hidden_size=48)
    StableDiffusionXLPipeline(
        unet=UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=4,
                                  out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                  up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
                                  use_linear_projection=True, addition_embed_type="text_time",
                                  addition_time_embed_dim=8, transformer_layers_per_block=(1, 2),
                                  projection_class_embeddings_input_dim=6 * 8 + 48, cross_attention_dim=32 + 48,
                                  norm_num_groups=1),
        # four levels: latents at 1/8 of the image, as in SDXL (the cost per pixel is SDXL's shape)
        vae=AutoencoderKL(block_out_channels=[8, 16, 32, 32], in_channels=3, out_channels=3, latent_channels=4,
                          norm_num_groups=8, down_block_types=["DownEncoderBlock2D"] * 4,
                          up_block_types=["UpDecoderBlock2D"] * 4),
        scheduler=EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, steps_offset=1,
                                         beta_schedule="scaled_linear", timestep_spacing="leading"),
        text_encoder=CLIPTextModel(text), tokenizer=tokenizer, text_encoder_2=CLIPTextModelWithProjection(text_2),
        tokenizer_2=tokenizer,
    ).save_pretrained(folder, safe_serialization=True)


def build_full_size_sdxl(folder: Path) -> None:
    """SDXL 1.0 base's architecture at full size (UNet 2.6B parameters, CLIP-L and OpenCLIP
    bigG encoders, the 4-level VAE) with random weights, in float16: it times as the real
    checkpoint does, for benches on a GPU (bench/throughput.py --family sdxl). The tokenizer is
    the demo kit's, so the token embeddings are smaller than the real ones (a lookup either way)."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(DEMO_TOKENIZER)
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id, "vocab_size": len(tokenizer)}
    torch.manual_seed(0)
    StableDiffusionXLPipeline(
        unet=UNet2DConditionModel(sample_size=128, block_out_channels=(320, 640, 1280), layers_per_block=2,
                                  down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                                  up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                                  attention_head_dim=(5, 10, 20), transformer_layers_per_block=(1, 2, 10),
                                  cross_attention_dim=2048, use_linear_projection=True, addition_embed_type="text_time",
                                  addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816),
        vae=AutoencoderKL(sample_size=1024, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                          down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                          latent_channels=4, scaling_factor=0.13025),
        scheduler=EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, steps_offset=1,
                                         beta_schedule="scaled_linear", timestep_spacing="leading"),
        text_encoder=CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                                  num_attention_heads=12, hidden_act="quick_gelu", **ids)),
        text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(
            hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20, hidden_act="gelu",
            projection_dim=1280, **ids)),
        tokenizer=tokenizer, tokenizer_2=tokenizer,
    ).to(torch.float16).save_pretrained(folder, safe_serialization=True)


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


def build_tiny_lora(model: Path, folder: Path, seed: int = 1) -> None:
    """A random (non-zero) LoRA on the pipeline's denoiser, saved in diffusers' format."""
    import torch
    from diffusers import DiffusionPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    pipe = DiffusionPipeline.from_pretrained(model)
    torch.manual_seed(seed)
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


def kohya_sgm_copy(model: Path, lora: Path, file: Path) -> None:
    """The same UNet LoRA as one Kohya file in the original SGM block naming that Kohya's SDXL
    scripts and A1111 write (lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q...)."""
    import torch
    from diffusers import UNet2DConditionModel
    from safetensors.torch import load_file, save_file

    unet = UNet2DConditionModel.from_pretrained(model / "unet")
    state = {}
    for key, value in load_file(lora / "pytorch_lora_weights.safetensors").items():
        module, _, kind = key.removeprefix("unet.").rpartition(".lora_")
        name = "lora_unet_" + original_unet_key(module, unet).replace(".", "_")
        state[f"{name}.lora_down.weight" if kind.startswith("A") else f"{name}.lora_up.weight"] = value
        state[f"{name}.alpha"] = torch.tensor(float(value.shape[0] if kind.startswith("A") else value.shape[1]))
    save_file(state, file)


def single_file_copy(folder: Path, file: Path, configs: Path) -> None:
    """An SD 1.x or SDXL diffusers folder as users download checkpoints: one .safetensors file in
    Stability's original key layout (what `from_single_file` reads), and, in `configs`, the
    folder's configs, scheduler and tokenizers without weights (what the catalog's `config` names)."""
    import shutil

    from diffusers import DiffusionPipeline
    from safetensors.torch import save_file

    pipe = DiffusionPipeline.from_pretrained(folder)
    state = {f"model.diffusion_model.{k}": v for k, v in _original_unet(pipe.unet).items()}
    state |= {f"first_stage_model.{k}": v for k, v in _original_vae(pipe.vae).items()}
    if getattr(pipe, "text_encoder_2", None) is not None:  # SDXL: CLIP-L, then OpenCLIP bigG
        state |= _original_clip(pipe.text_encoder, "conditioner.embedders.0.transformer.text_model.")
        state |= _original_open_clip(pipe.text_encoder_2, "conditioner.embedders.1.model.")
    else:
        state |= _original_clip(pipe.text_encoder, "cond_stage_model.transformer.text_model.")
    save_file({k: v.contiguous() for k, v in state.items()}, file)
    shutil.copytree(folder, configs, ignore=shutil.ignore_patterns("*.safetensors"))


def _renamed(key: str, renames: dict[str, str]) -> str:
    for old, new in renames.items():
        key = key.replace(old, new)
    return key


UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
               "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}
UNET_TOP = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
            "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
            "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}


def _original_unet(unet) -> dict:
    """UNet keys in the LDM layout: input_blocks / middle_block / output_blocks."""
    return {original_unet_key(key, unet): value for key, value in unet.state_dict().items()}


def original_unet_key(key: str, unet) -> str:
    """A diffusers UNet key (or module path) in the LDM layout."""
    per_block = unet.config.layers_per_block + 1  # resnets per up block; input blocks per level, downsampler included
    part = key.split(".")
    if part[0] in ("down_blocks", "up_blocks"):
        level, kind, index, rest = int(part[1]), part[2], int(part[3]), ".".join(part[4:])
        if part[0] == "down_blocks":
            if kind == "downsamplers":
                return f"input_blocks.{(level + 1) * per_block}.0.op.{rest.removeprefix('conv.')}"
            new = f"input_blocks.{level * per_block + index + 1}.{0 if kind == 'resnets' else 1}.{rest}"
        elif kind == "upsamplers":
            has_attention = hasattr(unet.up_blocks[level], "attentions")
            return f"output_blocks.{level * per_block + per_block - 1}.{2 if has_attention else 1}.{rest}"
        else:
            new = f"output_blocks.{level * per_block + index}.{0 if kind == 'resnets' else 1}.{rest}"
        return _renamed(new, UNET_RESNET) if kind == "resnets" else new
    if part[0] == "mid_block":
        kind, index, rest = part[1], int(part[2]), ".".join(part[3:])
        new = f"middle_block.{2 * index if kind == 'resnets' else 1}.{rest}"
        return _renamed(new, UNET_RESNET) if kind == "resnets" else new
    return _renamed(key, UNET_TOP)


VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _original_vae(vae) -> dict:
    """VAE keys in the LDM layout: encoder.down.N.block.M, decoder.up.N (levels reversed), mid.attn_1 as 1x1 convs."""
    levels = len(vae.config.up_block_types)
    state = {}
    for key, value in vae.state_dict().items():
        part = key.split(".")
        new = key.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
        if part[1] in ("down_blocks", "up_blocks"):
            level = int(part[2]) if part[1] == "down_blocks" else levels - 1 - int(part[2])
            name, rest = ("down", "downsample") if part[1] == "down_blocks" else ("up", "upsample")
            tail = ".".join(part[5:])
            sub = f"block.{part[4]}" if part[3] == "resnets" else rest
            new = f"{part[0]}.{name}.{level}.{sub}.{tail}".replace("conv_shortcut", "nin_shortcut")
        elif part[1] == "mid_block":
            if part[2] == "resnets":
                new = f"{part[0]}.mid.block_{int(part[3]) + 1}.{'.'.join(part[4:])}".replace("conv_shortcut",
                                                                                           "nin_shortcut")
            else:
                new = f"{part[0]}.mid.attn_1.{_renamed('.'.join(part[4:]), VAE_ATTENTION)}"
                value = value[:, :, None, None] if value.dim() == 2 else value
        state[new] = value
    return state


def _original_clip(encoder, prefix: str) -> dict:
    """A transformers CLIP text model in its own layout under the checkpoint's prefix."""
    return {prefix + key.removeprefix("text_model."): value for key, value in encoder.state_dict().items()
            if not key.startswith("text_projection")}


def _original_open_clip(encoder, prefix: str) -> dict:
    """A transformers CLIP text model with projection in OpenCLIP's layout: fused in_proj, resblocks, ln_final."""
    import torch

    source = encoder.state_dict()
    state = {prefix + "token_embedding.weight": source["text_model.embeddings.token_embedding.weight"],
             prefix + "positional_embedding": source["text_model.embeddings.position_embedding.weight"],
             prefix + "ln_final.weight": source["text_model.final_layer_norm.weight"],
             prefix + "ln_final.bias": source["text_model.final_layer_norm.bias"],
             prefix + "text_projection": source["text_projection.weight"].T}
    for layer in range(encoder.config.num_hidden_layers):
        old, new = f"text_model.encoder.layers.{layer}.", f"{prefix}transformer.resblocks.{layer}."
        for kind in ("weight", "bias"):
            state[f"{new}attn.in_proj_{kind}"] = torch.cat([source[f"{old}self_attn.{p}_proj.{kind}"] for p in "qkv"])
            state[f"{new}attn.out_proj.{kind}"] = source[f"{old}self_attn.out_proj.{kind}"]
            state[f"{new}ln_1.{kind}"] = source[f"{old}layer_norm1.{kind}"]
            state[f"{new}ln_2.{kind}"] = source[f"{old}layer_norm2.{kind}"]
            state[f"{new}mlp.c_fc.{kind}"] = source[f"{old}mlp.fc1.{kind}"]
            state[f"{new}mlp.c_proj.{kind}"] = source[f"{old}mlp.fc2.{kind}"]
    return state
