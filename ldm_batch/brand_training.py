"""Brand LoRA training: a folder of brand images in, a registered, licensed LoRA out.

As in the diffusers LoRA training examples: the base model's UNet gets a peft LoRA on its
attention and feed-forward layers, trained with the noise-prediction loss on the VAE
latents of the brand images, each with its caption (a sidecar `.txt`, a captions CSV, or
the file name) and an optional trigger word in front. The result goes under
`<policies>/loras/<brand>/<lora id>/`: the LoRA (diffusers format, safetensors), a manifest
(base model and its sha256, every training image's sha256 and caption, the images' rights
holder and license, hyper-parameters, software versions), a loss curve and samples before
and after on fixed seeds. `register` writes the LoRA into `policies/brands/<brand>.yaml`.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
import yaml
from PIL import Image, ImageDraw, UnidentifiedImageError

from ldm_batch.catalog import LOADING, verified_path, weights_sha256
from ldm_batch.policies import BrandTrainingPolicy, License, Policies
from ldm_batch.problems import BrandTrainingError, Problem
from ldm_batch.safety.text import TextScreen

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2"]
SOFTWARE = ("ldm-batch", "torch", "diffusers", "peft", "transformers")


def collect_images(directory: Path, captions_file: Path | None, policy: BrandTrainingPolicy,
                   screen: TextScreen, brand: str) -> list[dict]:
    """Every training image with its sha256, caption and pixels; raises BrandTrainingError
    listing all unreadable, tiny or duplicate images and captions the text screen refuses."""
    captions = {}
    if captions_file is not None:
        table = pd.read_csv(captions_file, dtype=str, keep_default_na=False)
        if not {"file", "caption"} <= set(table.columns):
            raise BrandTrainingError([Problem(file=str(captions_file), message="needs the columns file and caption")])
        captions = dict(zip(table["file"], table["caption"]))
    files = sorted(p for p in Path(directory).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    problems, images, seen = [], [], {}
    for path in files:
        data = path.read_bytes()
        try:
            with Image.open(io.BytesIO(data)) as opened:
                pixels = opened.convert("RGB")
        except (UnidentifiedImageError, OSError) as exc:
            problems.append(Problem(file=path.name, message=f"not a readable image ({exc})"))
            continue
        if min(pixels.size) < policy.min_size:
            problems.append(Problem(file=path.name, message=f"{pixels.size[0]}x{pixels.size[1]} is smaller than "
                                                            f"the policy's {policy.min_size} pixels"))
            continue
        sha = hashlib.sha256(data).hexdigest()
        if sha in seen:
            problems.append(Problem(file=path.name, message=f"the same image as {seen[sha]}; each image once"))
            continue
        seen[sha] = path.name
        sidecar = path.with_suffix(".txt")
        caption = captions.get(path.name) or (sidecar.read_text().strip() if sidecar.exists() else
                                              path.stem.replace("_", " ").replace("-", " "))
        images.append({"file": path.name, "sha256": sha, "caption": caption, "pixels": pixels})
    verdicts = screen.screen([i["caption"] for i in images], [brand] * len(images)) if images else []
    problems += [Problem(file=i["file"], message=f"caption {i['caption']!r} refused by the text screen "
                                                  f"({'; '.join(v.reasons)})")
                 for i, v in zip(images, verdicts) if v.decision != "allow"]
    if len(images) < policy.min_images:
        problems.append(Problem(file=str(directory), message=f"{len(images)} usable images; the policy needs at "
                                                             f"least {policy.min_images}"))
    if len(images) > policy.max_images:
        problems.append(Problem(file=str(directory), message=f"{len(images)} images; the policy allows at most "
                                                             f"{policy.max_images}"))
    if problems:
        raise BrandTrainingError(problems)
    return images


def load_base(policies: Policies, base: str, device: str):
    from diffusers import StableDiffusionPipeline

    entry = policies.models[base]
    path, sha = verified_path(entry.source, entry.revision, entry.sha256)
    with LOADING:
        pipe = StableDiffusionPipeline.from_pretrained(path, dtype=torch.float32, use_safetensors=True,
                                                       safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device), sha


def train_lora(pipe, images: list[dict], trigger: str | None, rank: int, steps: int, size: int,
               policy: BrandTrainingPolicy, checkpoint: Path,
               on_step: Callable[[int, float], None] = lambda step, loss: None) -> list[float]:
    """Train a LoRA adapter named "brand" into `pipe.unet`; resumes from `checkpoint` when it
    holds an earlier run of the same training. Returns the loss per step."""
    from diffusers import DDPMScheduler
    from peft import LoraConfig

    device = pipe.device
    torch.manual_seed(0)
    pipe.unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                     target_modules=LORA_TARGETS), adapter_name="brand")
    pipe.unet.requires_grad_(False)
    trainable = [p for name, p in pipe.unet.named_parameters() if "lora" in name]
    for parameter in trainable:
        parameter.requires_grad_(True)
    optimizer = torch.optim.AdamW(trainable, lr=policy.learning_rate)
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    pixels = torch.stack([torch.from_numpy(_array(i["pixels"].resize((size, size)))) for i in images])
    captions = [f"{trigger} {i['caption']}" if trigger else i["caption"] for i in images]
    with torch.no_grad():
        latents = pipe.vae.encode(pixels.to(device)).latent_dist.mean * pipe.vae.config.scaling_factor
        tokens = pipe.tokenizer(captions, padding="max_length", truncation=True,
                                max_length=pipe.tokenizer.model_max_length, return_tensors="pt").input_ids
        context = pipe.text_encoder(tokens.to(device))[0]
    fingerprint = hashlib.sha256(json.dumps([[i["sha256"] for i in images], captions, rank, steps,
                                             policy.model_dump()]).encode()).hexdigest()
    losses, start = [], 0
    if checkpoint.exists():
        saved = torch.load(checkpoint, weights_only=True)
        if saved["fingerprint"] == fingerprint:
            _set_lora_state(pipe.unet, saved["lora"])
            optimizer.load_state_dict(saved["optimizer"])
            torch.set_rng_state(saved["rng"])
            losses, start = list(saved["losses"]), int(saved["step"])
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    for step in range(start, steps):
        index = torch.randint(len(latents), (min(policy.batch_size, len(latents)),))
        noise = torch.randn_like(latents[index])
        t = torch.randint(0, scheduler.config.num_train_timesteps, (len(index),), device=device)
        with autocast:
            prediction = pipe.unet(scheduler.add_noise(latents[index], noise, t), t, context[index]).sample
        loss = F.mse_loss(prediction.float(), noise)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(round(loss.item(), 6))
        on_step(step + 1, losses[-1])
        if (step + 1) % policy.checkpoint_every == 0 and step + 1 < steps:
            torch.save({"fingerprint": fingerprint, "step": step + 1, "lora": lora_state(pipe.unet),
                        "optimizer": optimizer.state_dict(), "rng": torch.get_rng_state(), "losses": losses},
                       checkpoint)
    return losses


def lora_state(unet) -> dict[str, torch.Tensor]:
    from peft.utils import get_peft_model_state_dict

    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(unet, adapter_name="brand").items()}


def _set_lora_state(unet, state: dict[str, torch.Tensor]) -> None:
    from peft.utils import set_peft_model_state_dict

    set_peft_model_state_dict(unet, state, adapter_name="brand")


def _array(image: Image.Image):
    import numpy as np

    return (np.asarray(image, dtype=np.float32) / 127.5 - 1.0).transpose(2, 0, 1)


def samples(pipe, prompts: list[str], seeds: list[int]) -> Image.Image:
    """A grid: one row per prompt, the seeds without the LoRA, then the same seeds with it."""
    rows = []
    for use_lora in (False, True):
        (pipe.unet.enable_adapters if use_lora else pipe.unet.disable_adapters)()
        rows.append([pipe(prompt=p, generator=torch.Generator(pipe.device).manual_seed(s), num_inference_steps=20,
                          guidance_scale=5.0).images[0] for p in prompts for s in seeds])
    pipe.unet.enable_adapters()
    size, n = 96, len(prompts) * len(seeds)
    grid = Image.new("RGB", (n * size, 2 * size + 20), "white")
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            grid.paste(image.resize((size, size), Image.NEAREST), (c * size, 20 + r * size))
    ImageDraw.Draw(grid).text((4, 4), "top: base model; bottom: with the brand LoRA (same seeds)", fill="black")
    return grid


def loss_curve(losses: list[float]) -> Image.Image:
    width, height, pad = 600, 300, 30
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    top, bottom = max(losses), min(losses)
    span = (top - bottom) or 1.0
    points = [(pad + i * (width - 2 * pad) / max(1, len(losses) - 1),
               height - pad - (loss - bottom) / span * (height - 2 * pad)) for i, loss in enumerate(losses)]
    draw.line(points, fill=(30, 80, 160), width=2)
    draw.text((pad, 8), f"training loss per step: {losses[0]:.4f} -> {losses[-1]:.4f}", fill="black")
    return image


def manifest(brand: str, lora_id: str, base: str, base_sha: str, lora_sha: str, images: list[dict],
             hyper: dict, rights: dict, losses: list[float]) -> dict:
    from importlib.metadata import version

    return {"brand": brand, "lora_id": lora_id, "lora_sha256": lora_sha, "base_model": base,
            "base_model_sha256": base_sha, "created_at": datetime.now(UTC).isoformat(), "training_images": [
                {k: i[k] for k in ("file", "sha256", "caption")} for i in images],
            "images_rights": rights, "hyperparameters": hyper, "final_loss": losses[-1],
            "software": {name: version(name) for name in SOFTWARE}}


def register(policies_dir: Path, brand: str, entry: dict) -> Path:
    """Make the LoRA the brand's style in policies/brands/<brand>.yaml (other fields kept)."""
    path = policies_dir / "brands" / f"{brand}.yaml"
    data = yaml.safe_load(path.read_text()) if path.exists() else {"id": brand}
    data["loras"] = [entry]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# LoRA registered by `ldm-batch brand train` on {datetime.now(UTC):%Y-%m-%d}\n"
                    + yaml.safe_dump(data, sort_keys=False))
    return path


def train_brand(policies: Policies, policies_dir: Path, screen: TextScreen, brand: str, images_dir: Path,
                captions_file: Path | None, base: str, rank: int | None, steps: int | None, trigger: str | None,
                license: License, rights_holder: str, device: str,
                on_step: Callable[[int, float], None] = lambda step, loss: None) -> dict:
    """The whole command: check, train, report, register. Returns the manifest."""
    from diffusers import StableDiffusionPipeline

    policy = policies.brand_training
    rank, steps = rank or policy.rank, steps or policy.steps
    images = collect_images(images_dir, captions_file, policy, screen, brand)
    pipe, base_sha = load_base(policies, base, device)
    lora_id = f"{brand}-style-{hashlib.sha256(''.join(i['sha256'] for i in images).encode()).hexdigest()[:8]}"
    out = policies_dir / "loras" / brand / lora_id
    out.mkdir(parents=True, exist_ok=True)
    size = policies.models[base].defaults.width
    losses = train_lora(pipe, images, trigger, rank, steps, size, policy, out / "checkpoint.pt", on_step)
    StableDiffusionPipeline.save_lora_weights(out, unet_lora_layers=lora_state(pipe.unet), safe_serialization=True)
    lora_file = out / "pytorch_lora_weights.safetensors"
    prompts = [f"{trigger} {i['caption']}" if trigger else i["caption"] for i in images[:3]]
    samples(pipe, prompts, [1, 2]).save(out / "samples.png")
    loss_curve(losses).save(out / "loss.png")
    (out / "checkpoint.pt").unlink(missing_ok=True)
    lora_sha = weights_sha256(lora_file)
    record = manifest(brand, lora_id, base, base_sha, lora_sha, images,
                      {"rank": rank, "steps": steps, "trigger": trigger, **policy.model_dump()},
                      {"rights_holder": rights_holder, "license": license.model_dump()}, losses)
    (out / "manifest.json").write_text(json.dumps(record, indent=1))
    relative = out.relative_to(policies_dir)
    register(policies_dir, brand, {
        "id": lora_id, "source": f"./{relative}/{lora_file.name}", "sha256": lora_sha, "scale": 1.0,
        "base_model": base, "trigger": trigger, "license": license.model_dump(),
        "manifest": f"./{relative}/manifest.json",
        "manifest_sha256": hashlib.sha256((out / "manifest.json").read_bytes()).hexdigest()})
    return record
