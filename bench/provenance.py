"""Provenance robustness: how often each mark survives what a CMS does to a delivered image,
and how often `provenance check` then finds the right audit record (and never a wrong one).

    .venv/bin/python bench/provenance.py [--images 40] [--size 512] [--source demo|drawn|sdxl]

"Ours": demo-kit images (the demo model's 32x32 output, upscaled to --size, as a delivered
asset would be) or, with --source drawn, scenes drawn at --size (flat saturated colours, the
watermark's hardest case), or, with --source sdxl, images a tiny random-weight SDXL pipeline
(ldm_batch.demo_kit.tiny_families) makes at --size (noise-like textures), marked by the product's Marker and recorded in a fresh SQLite
audit log the way a run records them. "Foreign": images the pipeline did not record: the same model with
other seeds (look-alikes, the hardest case) and drawn scenes. Each transformation is applied
to every image; prints one JSON object per transformation and a summary.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageEnhance

from ldm_batch.audit import AuditLog, AuditRecord
from ldm_batch.audit.log import now
from ldm_batch.config import REPO_POLICIES, Settings
from ldm_batch.demo_kit.world import Scene, all_scenes, caption, draw
from ldm_batch.generate import ImageGenerator
from ldm_batch.plan import group_batches, plan_row
from ldm_batch.policies import load_policies
from ldm_batch.provenance import Marker
from ldm_batch.provenance_check import check_file
from ldm_batch.sheets import PromptRow


def encoded(image: Image.Image, format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format=format, **options)
    return buffer.getvalue()


def crop(image: Image.Image, share: float) -> Image.Image:
    w, h = image.size
    dx, dy = round(w * share / 2), round(h * share / 2)
    return image.crop((dx, dy, w - dx, h - dy))


def screenshot(image: Image.Image) -> Image.Image:
    """Shown on a page at 80% with a margin, brightened a little, captured on a 1.25x display."""
    w, h = image.size
    shown = ImageEnhance.Brightness(image.convert("RGB").resize((w * 4 // 5, h * 4 // 5), Image.BILINEAR)).enhance(1.05)
    page = Image.new("RGB", (shown.width + 80, shown.height + 120), (250, 250, 250))
    page.paste(shown, (40, 80))
    return page.resize((page.width * 5 // 4, page.height * 5 // 4), Image.BICUBIC)


def half(image):
    return image.resize((image.width // 2, image.height // 2), Image.LANCZOS)


TRANSFORMS = {
    "metadata stripped (PNG)": lambda im: encoded(im, "PNG"),
    "resize 50%": lambda im: encoded(half(im), "PNG"),
    "JPEG q85": lambda im: encoded(im, "JPEG", quality=85),
    "JPEG q70": lambda im: encoded(im, "JPEG", quality=70),
    "WebP q80": lambda im: encoded(im, "WEBP", quality=80),
    "stripped + resize 50% + JPEG q85": lambda im: encoded(half(im), "JPEG", quality=85),
    "crop 10%": lambda im: encoded(crop(im, 0.1), "JPEG", quality=90),
    "screenshot re-render": lambda im: encoded(screenshot(im), "PNG"),
}


def demo_images(count: int, seed: int, size: int) -> list[Image.Image]:
    policies = load_policies(REPO_POLICIES)
    rng = random.Random(seed)
    scenes = rng.sample(all_scenes(), count)
    generator = ImageGenerator(policies, "cpu")
    images = []
    for i, scene in enumerate(scenes):
        row = PromptRow(row=i + 1, asset_id=f"a{i}", prompt=caption(scene, rng), variants=1, seed=seed * 1000 + i)
        for batch in group_batches(plan_row(row, "bench", policies), 8):
            images += [g.image.resize((size, size), Image.LANCZOS) for g in generator.generate(batch)]
    return images


def sdxl_images(count: int, size: int, folder: Path) -> list[Image.Image]:
    import torch
    from diffusers import DiffusionPipeline

    from ldm_batch.demo_kit.tiny_families import build_tiny_sdxl

    build_tiny_sdxl(folder / "tiny-sdxl")
    pipe = DiffusionPipeline.from_pretrained(folder / "tiny-sdxl")
    pipe.set_progress_bar_config(disable=True)
    rng = random.Random(3)
    return [pipe(prompt=caption(scene, rng), width=size, height=size, num_inference_steps=4,
                 generator=torch.Generator().manual_seed(i)).images[0]
            for i, scene in enumerate(rng.sample(all_scenes(), count))]


def record(key: str, marks) -> AuditRecord:
    return AuditRecord(kind="image", run_id="bench", campaign="bench", sheet="bench.csv", sheet_row=1,
                       asset_id=key.split("/")[1], decision="delivered", prompt="", text_verdict={}, image_key=key,
                       created_at=now().isoformat(), **marks.model_dump())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--source", choices=("demo", "drawn", "sdxl"), default="demo")
    args = parser.parse_args()
    policies = load_policies(REPO_POLICIES)
    marker = Marker(policies.provenance, Settings(c2pa_certificate=None, c2pa_private_key=None))
    with tempfile.TemporaryDirectory() as folder:
        log = AuditLog(f"sqlite:///{Path(folder) / 'audit.db'}")
        log.migrate()
        ours, keys = [], []
        images = {"demo": lambda: demo_images(args.images, 1, args.size),
                  "sdxl": lambda: sdxl_images(args.images, args.size, Path(folder)),
                  "drawn": lambda: [draw(scene, random.Random(i), size=args.size)
                                    for i, scene in enumerate(random.Random(1).sample(all_scenes(), args.images))],
                  }[args.source]()
        started = time.perf_counter()
        for i, image in enumerate(images):
            key = f"bench/a{i}/a{i}-v1.png"
            png = marker.encode(image, {"seed": i}, key)
            log.append([record(key, marker.marks(png, key))])
            ours.append(Image.open(io.BytesIO(png)))
            keys.append(key)
        mark_seconds = (time.perf_counter() - started) / args.images  # encode, watermark, record
        foreign = demo_images(args.images // 2, 2, args.size) + [
            draw(Scene(*random.Random(i).choice([("red", "circle", "white"), ("blue", "star", "yellow")])),
                 random.Random(i), size=args.size) for i in range(args.images - args.images // 2)]
        results = {}
        for name, transform in TRANSFORMS.items():
            counts = dict.fromkeys(("watermark", "confirmed", "lookalike", "wrong_confirmed", "wrong_lookalike",
                                    "foreign_confirmed", "foreign_lookalike"), 0)
            started = time.perf_counter()
            for key, image in zip(keys, ours):
                found = check_file(transform(image), key, log, policies.provenance.watermark)
                counts["watermark"] += found.watermark_id is not None
                if found.match is not None:
                    kind = "lookalike" if found.match.method == "perceptual" else "confirmed"
                    counts[kind if found.match.image_key == key else f"wrong_{kind}"] += 1
            for i, image in enumerate(foreign):
                match = check_file(transform(image), f"f{i}", log, policies.provenance.watermark).match
                if match is not None:
                    counts["foreign_lookalike" if match.method == "perceptual" else "foreign_confirmed"] += 1
            results[name] = {
                "watermark_read": round(counts["watermark"] / len(ours), 3),
                "right_record_confirmed": round(counts["confirmed"] / len(ours), 3),  # by sha256, pixels or watermark
                "right_record_with_lookalikes": round((counts["confirmed"] + counts["lookalike"]) / len(ours), 3),
                "wrong_confirmed": counts["wrong_confirmed"], "wrong_lookalike": counts["wrong_lookalike"],
                "foreign_confirmed": counts["foreign_confirmed"], "foreign_lookalike": counts["foreign_lookalike"],
                "check_seconds": round((time.perf_counter() - started) / (len(ours) + len(foreign)), 3)}
            print(json.dumps({"transformation": name, **results[name]}), flush=True)
    print(json.dumps({"source": args.source, "images": len(ours), "foreign": len(foreign), "size": args.size,
                      "mark_seconds_per_image": round(mark_seconds, 3)}))


if __name__ == "__main__":
    main()
