"""Brand LoRA training on the demo kit: how long it takes, and whether images move to the brand.

    .venv/bin/python bench/brand_lora.py [--images 200] [--steps 300] [--json]

Trains a LoRA for a new brand "initech" on N demo-world images tinted purple (a palette no
demo brand has), through the same code as `ldm-batch brand train`, in a scratch copy of
policies/. Then, as the kit's `lora_effect` does, on 24 prompts and the same seeds: the
relative decrease of the mean pixel distance to purple with the new LoRA, and with acme's
LoRA for comparison (> 0: toward purple). Finally a prompt without the brand is generated
before and after registration, through the product's generator, and compared byte for byte.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import tempfile
import time
from pathlib import Path

from ldm_batch.brand_training import train_brand
from ldm_batch.catalog import resolve
from ldm_batch.demo_kit.evaluate import _palette_distance, generate
from ldm_batch.demo_kit.world import all_scenes, caption, draw, split_scenes, tint
from ldm_batch.generate import ImageGenerator
from ldm_batch.plan import group_batches, plan_row
from ldm_batch.policies import License, load_policies
from ldm_batch.safety.text import TextScreen
from ldm_batch.sheets import PromptRow

REPO = Path(__file__).resolve().parent.parent
PURPLE = (150, 40, 200)


def plain_image(policies) -> bytes:
    row = PromptRow(row=1, asset_id="plain", prompt="a green star on a white background", seed=9)
    (image,) = ImageGenerator(policies, "cpu").generate(group_batches(plan_row(row, "c", policies), 1)[0])
    return image.image.tobytes()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="brand-bench-"))
    policies_dir = scratch / "policies"
    shutil.copytree(REPO / "policies", policies_dir)
    images = scratch / "images"
    images.mkdir()
    rng = random.Random(0)
    # no crosses: "black cross centred on white" trips the text screen's hate category (a
    # known false positive), and crosses are the demo's protected-emblem shape anyway
    scenes = [s for s in all_scenes() if s.shape != "cross"]
    for i, scene in enumerate(rng.choices(scenes, k=args.images)):
        tint(draw(scene, rng), PURPLE, 0.45).save(images / f"{i:04d}.png")
        (images / f"{i:04d}.txt").write_text(caption(scene, rng))

    policies = load_policies(policies_dir)
    before = plain_image(policies)
    started = time.perf_counter()
    manifest = train_brand(policies, policies_dir, TextScreen(policies, policies_dir), "initech", images, None,
                           "demo-tiny-sd", None, args.steps, None, License(id="proprietary", commercial_use=True),
                           "Initech Inc.", "cpu")
    training_seconds = time.perf_counter() - started
    after_registration = load_policies(policies_dir)

    generator = ImageGenerator(after_registration, "cpu")
    pipe, _ = generator.pipeline("demo-tiny-sd")
    lora = after_registration.brands["initech"].loras[0]
    acme = after_registration.brands["acme"].loras[0]
    pipe.load_lora_weights(Path(lora.source).parent, adapter_name="initech")
    pipe.load_lora_weights(resolve(acme.source, None), adapter_name="acme")
    train, _ = split_scenes()
    prompt_rng = random.Random(5)
    prompts = [caption(s, prompt_rng) for s in prompt_rng.sample(train, 24)]
    pipe.disable_lora()
    base = _palette_distance(generate(pipe, prompts, seed=300), PURPLE)
    moved = {}
    for adapter in ("initech", "acme"):
        pipe.enable_lora()
        pipe.set_adapters([adapter], [1.0])
        moved[adapter] = round((base - _palette_distance(generate(pipe, prompts, seed=300), PURPLE)) / base, 3)
    report = {
        "images": args.images, "steps": manifest["hyperparameters"]["steps"],
        "training_seconds": round(training_seconds, 1), "final_loss": manifest["final_loss"],
        "toward_purple": {"initech_lora": moved["initech"], "acme_lora": moved["acme"]},
        "prompt_without_brand_unchanged": plain_image(after_registration) == before,
    }
    shutil.rmtree(scratch)
    print(json.dumps(report) if args.json else json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
