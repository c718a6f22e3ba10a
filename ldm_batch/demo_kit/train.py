"""Train the demo kit from nothing, on CPU: `python -m ldm_batch.demo_kit.train`.

Stages, each a plain loop (about 30 minutes on 2 cores in all; TRAINING.json has each stage's time):
  1. VAE        AutoencoderKL, 32x32 RGB <-> 8x8x4 latents, L1 + MSE + tiny KL; trained long
                enough that its reconstructions keep the shapes (the pixel judge names the
                shape of 90% of them after 1,500 steps, 65% after 500)
  2. text-to-image  UNet2DConditionModel + CLIPTextModel (real CLIP tokenizer), trained
                together on VAE latents; caption dropout for classifier-free guidance,
                min-SNR weighting, EMA
  3. CLIP       an open_clip model trained contrastively on the same captions (image screen);
                its image tower is a small ModifiedResNet: on 32x32 shapes it learns in
                500 steps what a ViT of the same cost does not (top-1 retrieval 0.99 vs 0.66).
                Half its pictures are augmented as a real screen meets them (faint tints, any
                shape size and place, canvas size, blur, JPEG); `--only-clip` retrains it alone
  4. LoRAs      one per demo brand, on the UNet, from images tinted to the brand's palette
The result is written in the formats production checkpoints use: a StableDiffusionPipeline
directory, an open_clip `local-dir:` directory, and diffusers LoRA files, in fp16.
"""

from __future__ import annotations

import argparse
import copy
import gzip
import json
import random
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ldm_batch.demo_kit.world import COLOURS, SHAPES, SIZE, augmented, caption, draw, split_scenes, tint

WEIGHTS = Path(__file__).parent / "weights"
BRAND_PALETTES = {"acme": (245, 140, 20), "globex": (0, 160, 170)}  # orange, teal
BRAND_TINT = 0.45
MAX_TOKENS = 20


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def one_cycle(optimizer, lr: float, steps: int):
    """Warm up over the first 5% of steps, then anneal (cosine)."""
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps,
                                               pct_start=max(0.05, 2 / steps))


def to_tensor(images) -> torch.Tensor:
    array = np.stack([np.asarray(im, dtype=np.float32) for im in images]) / 127.5 - 1.0
    return torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()


def make_dataset(n: int, seed: int):
    train_scenes, _ = split_scenes()
    rng = random.Random(seed)
    scenes = [rng.choice(train_scenes) for _ in range(n)]
    return scenes, [draw(scene, rng) for scene in scenes]


def make_clip_dataset(n: int, seed: int):
    """The image screen's pictures: the kit's own draws plus as many augmented ones (tints,
    shape size and place, canvas size, blur, JPEG: world.augmented), same captions."""
    scenes, images = make_dataset(n, seed)
    train_scenes, _ = split_scenes()
    rng = random.Random(seed + 1)
    more = [rng.choice(train_scenes) for _ in range(n)]
    return scenes + more, images + [augmented(scene, rng) for scene in more]


def write_clip_tokenizer(out: Path):
    """A transformers CLIPTokenizer whose ids match open_clip's, from open_clip's BPE file."""
    from open_clip.tokenizer import bytes_to_unicode, default_bpe
    from transformers import CLIPTokenizer

    merges = gzip.open(default_bpe()).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    with tempfile.TemporaryDirectory() as raw:
        (Path(raw) / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}))
        (Path(raw) / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
        tokenizer = CLIPTokenizer(str(Path(raw) / "vocab.json"), str(Path(raw) / "merges.txt"),
                                  model_max_length=MAX_TOKENS)
        tokenizer.save_pretrained(out)
    return CLIPTokenizer.from_pretrained(out)


# -- attribute heads: teach encoders which colour is the shape's and which the background's --
class AttributeHeads(torch.nn.Module):
    """Linear probes for (foreground colour, shape, background colour). Trained beside the
    text encoder and CLIP, they make the encoders bind each colour to its role; word order
    alone ("white background with a red circle") does not tell which is which."""

    def __init__(self, width: int):
        super().__init__()
        self.fg = torch.nn.Linear(width, len(COLOURS))
        self.shape = torch.nn.Linear(width, len(SHAPES))
        self.bg = torch.nn.Linear(width, len(COLOURS))

    def loss(self, features: torch.Tensor, scenes) -> torch.Tensor:
        colours = list(COLOURS)
        fg = torch.tensor([colours.index(s.fg) for s in scenes])
        shape = torch.tensor([SHAPES.index(s.shape) for s in scenes])
        bg = torch.tensor([colours.index(s.bg) for s in scenes])
        return (F.cross_entropy(self.fg(features), fg) + F.cross_entropy(self.shape(features), shape)
                + F.cross_entropy(self.bg(features), bg))


# -- 1. VAE ------------------------------------------------------------------------------
def train_vae(pixels: torch.Tensor, steps: int, batch: int = 64):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, sample_size=SIZE, norm_num_groups=8,
                        block_out_channels=(16, 32, 32), layers_per_block=1,
                        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=2e-3)
    schedule = one_cycle(optimizer, 2e-3, steps)
    for step in range(steps):
        x = pixels[torch.randint(len(pixels), (batch,))]
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample()).sample
        loss = F.l1_loss(recon, x) + F.mse_loss(recon, x) + 1e-6 * posterior.kl().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"vae step {step}: loss {loss.item():.4f}")
    vae.eval()
    with torch.no_grad():
        latents = torch.cat([vae.encode(pixels[i : i + 512]).latent_dist.mean for i in range(0, len(pixels), 512)])
        recon = vae.decode(latents[:256]).sample
    log(f"vae reconstruction MAE {((recon - pixels[:256]).abs().mean() * 127.5).item():.1f}/255")
    scaling = 1.0 / latents.std().item()
    vae.register_to_config(scaling_factor=scaling)
    return vae, latents * scaling


# -- 2. text-to-image ----------------------------------------------------------------------
def stray_words(tokenizer, count: int = 4000) -> list[str]:
    """Common whole words of the CLIP vocabulary that are not part of the demo world's captions."""
    from ldm_batch.demo_kit.world import SHAPE_WORDS

    known = set(COLOURS) | {w for words in SHAPE_WORDS.values() for phrase in words for w in phrase.split()}
    known |= {"background", "backdrop", "behind", "on", "in", "over", "against", "is", "with"}
    vocabulary = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    words = [token[:-4] for token, _ in vocabulary[500:] if token.endswith("</w>") and token[:-4].isascii() and token[:-4].isalpha()]
    return [w for w in words if len(w) > 2 and w not in known][:count]


def tokenize(tokenizer, captions: list[str]) -> torch.Tensor:
    return tokenizer(captions, padding="max_length", max_length=MAX_TOKENS, truncation=True,
                     return_tensors="pt").input_ids


def new_unet_and_text_encoder():
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=96, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4,
        max_position_embeddings=MAX_TOKENS, projection_dim=96, bos_token_id=49406, eos_token_id=49407,
        pad_token_id=49407))
    unet = UNet2DConditionModel(
        sample_size=SIZE // 4, in_channels=4, out_channels=4, layers_per_block=1, norm_num_groups=16,
        block_out_channels=(64, 128), cross_attention_dim=96, attention_head_dim=16,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"))
    return unet, text_encoder


def noise_scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


def pretrain_text_encoder(text_encoder, heads: AttributeHeads, tokenizer, scenes, steps: int, batch: int = 256,
                          seed: int = 0) -> None:
    """Before the UNet sees it, the text encoder learns to say which colour is which."""
    parameters = [p for p in text_encoder.parameters() if p.requires_grad] + list(heads.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=2e-3, weight_decay=0.01)
    schedule = one_cycle(optimizer, 2e-3, steps)
    rng = random.Random(seed)
    strays = stray_words(tokenizer)
    for step in range(steps):
        chosen = [scenes[i] for i in torch.randint(len(scenes), (batch,)).tolist()]
        captions = [caption(s, rng, stray_words=strays) for s in chosen]
        pooled = text_encoder(tokenize(tokenizer, captions)).pooler_output
        loss = heads.loss(pooled, chosen)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"text encoder step {step}: attribute loss {loss.item():.4f}")


def diffusion_loss(unet, text_encoder, tokenizer, scheduler, latents, captions, heads=None, scenes=None):
    noise = torch.randn_like(latents)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (len(latents),))
    noisy = scheduler.add_noise(latents, noise, t)
    encoded = text_encoder(tokenize(tokenizer, captions))
    context = encoded[0]
    prediction = unet(noisy, t, context).sample
    alphas = scheduler.alphas_cumprod[t]
    snr = alphas / (1 - alphas)
    weight = torch.clamp(snr, max=5.0) / snr  # min-SNR-5 for epsilon prediction
    loss = (weight * F.mse_loss(prediction, noise, reduction="none").mean(dim=(1, 2, 3))).mean()
    if heads is not None:  # keep the attribute binding while the encoder learns for the UNet
        captioned = [i for i, c in enumerate(captions) if c]
        loss = loss + 0.1 * heads.loss(encoded.pooler_output[captioned], [scenes[i] for i in captioned])
    return loss


def train_text_to_image(latents, scenes, tokenizer, steps: int, text_steps: int, batch: int = 128, seed: int = 0):
    from diffusers.training_utils import EMAModel

    unet, text_encoder = new_unet_and_text_encoder()
    # The 49,408-row token embedding stays at its random init: the layers above learn to
    # read it, and skipping its optimiser and EMA updates saves time on CPU.
    text_encoder.get_input_embeddings().requires_grad_(False)
    heads = AttributeHeads(text_encoder.config.hidden_size)
    pretrain_text_encoder(text_encoder, heads, tokenizer, scenes, text_steps)
    parameters = list(unet.parameters()) + [p for p in text_encoder.parameters() if p.requires_grad]
    ema = EMAModel(parameters, decay=0.998)
    optimizer = torch.optim.AdamW(parameters + list(heads.parameters()), lr=5e-4, weight_decay=0.01)
    schedule = one_cycle(optimizer, 5e-4, steps)
    scheduler = noise_scheduler()
    rng = random.Random(seed)
    strays = stray_words(tokenizer)
    for step in range(steps):
        index = torch.randint(len(latents), (batch,))
        captions = ["" if rng.random() < 0.1 else caption(scenes[i], rng, stray_words=strays)
                    for i in index.tolist()]
        loss = diffusion_loss(unet, text_encoder, tokenizer, scheduler, latents[index], captions, heads,
                              [scenes[i] for i in index.tolist()])
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        schedule.step()
        ema.step(parameters)
        if step % 100 == 0 or step == steps - 1:
            log(f"unet step {step}: loss {loss.item():.4f}")
    ema.copy_to(parameters)
    return unet.eval(), text_encoder.eval()


# -- 3. CLIP -------------------------------------------------------------------------------
CLIP_CONFIG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": SIZE, "layers": [1, 1, 1, 1], "width": 16},  # ModifiedResNet
    "text_cfg": {"context_length": MAX_TOKENS, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def train_clip(pixels, scenes, steps: int, batch: int = 256, seed: int = 0):
    import open_clip

    torch.manual_seed(seed)
    model = open_clip.CLIP(**CLIP_CONFIG)
    model.token_embedding.requires_grad_(False)  # as for the text encoder above
    image_heads, text_heads = AttributeHeads(CLIP_CONFIG["embed_dim"]), AttributeHeads(CLIP_CONFIG["embed_dim"])
    tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=MAX_TOKENS)
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable + list(image_heads.parameters()) + list(text_heads.parameters()),
                                  lr=1e-3, weight_decay=0.1)
    schedule = one_cycle(optimizer, 1e-3, steps)
    rng = random.Random(seed)
    for step in range(steps):
        index = torch.randint(len(pixels), (batch,)).tolist()
        images = ((pixels[index] + 1) / 2 - mean) / std
        texts = tokenizer([caption(scenes[i], rng) for i in index])
        image_features, text_features, logit_scale = model(images, texts)
        logits = logit_scale * image_features @ text_features.T
        # captions of the same scene are true matches too: soft targets over equal scenes
        keys = [(scenes[i].fg, scenes[i].shape, scenes[i].bg) for i in index]
        same = torch.tensor([[a == b for b in keys] for a in keys], dtype=torch.float32)
        targets = same / same.sum(dim=1, keepdim=True)
        loss = (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2
        chosen = [scenes[i] for i in index]
        loss = loss + 0.5 * (image_heads.loss(image_features, chosen) + text_heads.loss(text_features, chosen))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"clip step {step}: loss {loss.item():.4f}")
    return model.eval()


# -- 4. brand LoRAs ----------------------------------------------------------------------------
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2"]


def train_lora(unet, text_encoder, vae, tokenizer, brand: str, steps: int, batch: int = 64, seed: int = 0):
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    scenes, images = make_dataset(2048, seed=1000 + seed)
    pixels = to_tensor([tint(im, BRAND_PALETTES[brand], BRAND_TINT) for im in images])
    with torch.no_grad():
        latents = vae.encode(pixels).latent_dist.mean * vae.config.scaling_factor
    torch.manual_seed(seed)
    unet.add_adapter(LoraConfig(r=8, lora_alpha=8, init_lora_weights="gaussian", target_modules=LORA_TARGETS),
                     adapter_name=brand)
    unet.set_adapters([brand])
    trainable = [p for n, p in unet.named_parameters() if "lora" in n and f".{brand}." in n]
    for p in unet.parameters():
        p.requires_grad_(False)
    for p in trainable:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(trainable, lr=2e-3)
    scheduler = noise_scheduler()
    rng = random.Random(seed)
    for step in range(steps):
        index = torch.randint(len(latents), (batch,))
        captions = [caption(scenes[i], rng) for i in index.tolist()]
        with torch.no_grad():
            context = text_encoder(tokenize(tokenizer, captions))[0]
        noise = torch.randn_like(latents[index])
        t = torch.randint(0, 1000, (batch,))
        prediction = unet(scheduler.add_noise(latents[index], noise, t), t, context).sample
        loss = F.mse_loss(prediction, noise)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 50 == 0 or step == steps - 1:
            log(f"lora {brand} step {step}: loss {loss.item():.4f}")
    return get_peft_model_state_dict(unet, adapter_name=brand)


# -- assembling the kit ------------------------------------------------------------------------
def save_clip(clip_dir: Path, clip_model) -> None:
    from safetensors.torch import save_file

    clip_dir.mkdir(parents=True)
    (clip_dir / "open_clip_config.json").write_text(json.dumps({"model_cfg": CLIP_CONFIG}, indent=2))
    save_file({k: v.detach().to(torch.float16).contiguous() for k, v in clip_model.state_dict().items()},
              str(clip_dir / "open_clip_model.safetensors"))


def save_kit(out: Path, vae, unet, text_encoder, tokenizer_dir: Path, clip_model, loras: dict) -> None:
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from transformers import CLIPTokenizer

    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=CLIPTokenizer.from_pretrained(tokenizer_dir), unet=unet,
        scheduler=DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                clip_sample=False, set_alpha_to_one=False, steps_offset=1),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.to(torch.float16).save_pretrained(out / "demo-tiny-sd", safe_serialization=True)

    save_clip(out / "demo-clip", clip_model)
    for brand, state in loras.items():
        StableDiffusionPipeline.save_lora_weights(
            out / f"{brand}-style", unet_lora_layers={k: v.to(torch.float16) for k, v in state.items()},
            safe_serialization=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=WEIGHTS, help="where the kit is written (replaced)")
    parser.add_argument("--images", type=int, default=24000)
    parser.add_argument("--vae-steps", type=int, default=1500)
    parser.add_argument("--text-steps", type=int, default=600)
    parser.add_argument("--unet-steps", type=int, default=1000)
    parser.add_argument("--clip-steps", type=int, default=800)
    parser.add_argument("--lora-steps", type=int, default=120)
    parser.add_argument("--only-clip", action="store_true",
                        help="retrain the image screen's CLIP alone and replace only <out>/demo-clip")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    started = time.time()
    if args.only_clip:
        scenes, images = make_clip_dataset(args.images, seed=0)
        clip_model = train_clip(to_tensor(images), scenes, args.clip_steps)
        staging = Path(tempfile.mkdtemp(prefix="demo-clip-")) / "demo-clip"
        save_clip(staging, clip_model)
        shutil.rmtree(args.out / "demo-clip", ignore_errors=True)
        shutil.copytree(staging, args.out / "demo-clip")
        record = json.loads((args.out / "TRAINING.json").read_text())
        record["clip_steps"] = args.clip_steps
        record["stage_seconds"]["clip"] = round(time.time() - started)
        (args.out / "TRAINING.json").write_text(json.dumps(record, indent=2))
        log(f"demo-clip written to {args.out / 'demo-clip'} in {(time.time() - started) / 60:.1f} min")
        return
    work = Path(tempfile.mkdtemp(prefix="demo-kit-"))
    tokenizer_dir = work / "tokenizer"
    tokenizer = write_clip_tokenizer(tokenizer_dir)
    scenes, images = make_dataset(args.images, seed=0)
    pixels = to_tensor(images)
    log(f"dataset: {len(images)} images of {len(set(scenes))} scenes")

    stages = {}  # seconds per stage, recorded in TRAINING.json
    mark = time.time()

    def stage_done(name: str) -> None:
        nonlocal mark
        stages[name] = round(time.time() - mark)
        mark = time.time()

    vae, latents = train_vae(pixels, args.vae_steps)
    stage_done("vae")
    unet, text_encoder = train_text_to_image(latents, scenes, tokenizer, args.unet_steps, args.text_steps)
    stage_done("text_to_image")
    clip_scenes, clip_images = make_clip_dataset(args.images, seed=0)
    clip_model = train_clip(to_tensor(clip_images), clip_scenes, args.clip_steps)
    stage_done("clip")
    # each LoRA trains on its own copy, so the saved base UNet carries no adapter wrappers
    loras = {brand: train_lora(copy.deepcopy(unet), text_encoder, vae, tokenizer, brand, args.lora_steps, seed=i)
             for i, brand in enumerate(BRAND_PALETTES)}
    stage_done("loras")

    staging = work / "kit"
    save_kit(staging, vae, unet, text_encoder, tokenizer_dir, clip_model, loras)
    (staging / "TRAINING.json").write_text(json.dumps(
        {**vars(args), "out": None, "seconds": round(time.time() - started), "stage_seconds": stages,
         "torch": torch.__version__,
         "threads": torch.get_num_threads()}, indent=2))
    shutil.rmtree(args.out, ignore_errors=True)
    shutil.copytree(staging, args.out)
    shutil.rmtree(work, ignore_errors=True)
    log(f"demo kit written to {args.out} in {(time.time() - started) / 60:.1f} min")


if __name__ == "__main__":
    main()
