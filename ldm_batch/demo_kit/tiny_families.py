"""Tiny random-weight pipelines of each model family, built offline from configs the way
diffusers' own tests build theirs, for the tests and benches: SDXL (two text encoders, pooled
embeddings), SD3 (MMDiT, saved without its optional T5 encoder), Flux.1 (CLIP + T5, a rotary
transformer) and PixArt-Sigma (T5 only), and random LoRAs for them in diffusers and Kohya format.
Random weights make noise, but run the real architectures at the real cost per pixel.
"""

from __future__ import annotations

from pathlib import Path

DEMO_TOKENIZER = Path(__file__).parent / "weights" / "demo-tiny-sd" / "tokenizer"


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
        # four levels: latents at 1/8 of the image, as in SDXL (the cost per pixel is SDXL's shape)
        vae=AutoencoderKL(block_out_channels=[8, 16, 32, 32], in_channels=3, out_channels=3, latent_channels=4,
                          norm_num_groups=8, down_block_types=["DownEncoderBlock2D"] * 4,
                          up_block_types=["UpDecoderBlock2D"] * 4),
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
