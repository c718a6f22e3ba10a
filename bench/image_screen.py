"""Image screen overhead: screening time as a share of generation time for the same batch.

    .venv/bin/python bench/image_screen.py [--batch 8] [--repeats 3]

Generates one batch with the demo kit, then screens it with the policy's CLIP concepts,
and with open_nsfw added as a second signal. Prints one JSON object with the ratios
(best of `--repeats` for each timing). The demo model is tiny, so generation is cheap and
the ratio is pessimistic compared with a real checkpoint on a GPU.
"""

from __future__ import annotations

import argparse
import json
import time

from ldm_batch.config import REPO_POLICIES
from ldm_batch.generate import ImageGenerator
from ldm_batch.plan import group_batches, plan_row
from ldm_batch.policies import NsfwSignal, load_policies
from ldm_batch.safety.image import ImageScreen
from ldm_batch.sheets import PromptRow


def best_of(repeats: int, fn) -> tuple[float, object]:
    timings, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = fn()
        timings.append(time.perf_counter() - started)
    return min(timings), result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    policies = load_policies(REPO_POLICIES)
    row = PromptRow(row=1, asset_id="b", prompt="a red circle on a white background", variants=args.batch, seed=1)
    batch = group_batches(plan_row(row, "bench", policies), args.batch)[0]
    generator = ImageGenerator(policies, "auto")
    generator.generate(batch)  # load and warm up
    generation, generated = best_of(args.repeats, lambda: generator.generate(batch))
    images = [g.image for g in generated]
    clip_screen = ImageScreen(policies, generator.device)
    with_nsfw = ImageScreen(policies.model_copy(update={"image_safety": policies.image_safety.model_copy(
        update={"nsfw": NsfwSignal(model="open-nsfw")})}), generator.device)
    clip_screen.screen_images(images), with_nsfw.screen_images(images)  # warm up
    clip_time, _ = best_of(args.repeats, lambda: clip_screen.screen_images(images))
    both_time, _ = best_of(args.repeats, lambda: with_nsfw.screen_images(images))
    print(json.dumps({
        "device": generated[0].device, "batch": args.batch, "steps": batch.settings.steps,
        "generation_seconds": round(generation, 4), "clip_screen_seconds": round(clip_time, 4),
        "clip_plus_open_nsfw_seconds": round(both_time, 4),
        "clip_screen_share_of_generation": round(clip_time / generation, 4),
        "clip_plus_open_nsfw_share_of_generation": round(both_time / generation, 4),
    }))


if __name__ == "__main__":
    main()
