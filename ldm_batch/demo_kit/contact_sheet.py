"""A contact sheet of the demo kit: `python -m ldm_batch.demo_kit.contact_sheet --out docs/demo_kit.png`.

Rows are prompts (phrasings the model never saw in training among them), columns are
seeds, then the same prompt with each brand LoRA. Images are scaled up 3x for viewing.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from ldm_batch.demo_kit.evaluate import GUIDANCE, SIZE, STEPS, load_pipeline
from ldm_batch.demo_kit.train import BRAND_PALETTES, WEIGHTS

PROMPTS = [
    "a red circle on a white background",
    "an image of a blue square against a yellow background",
    "green triangle, black backdrop",
    "picture showing a yellow star, the background is purple",
    "a white heart on an orange background",
    "a red plus sign, white backdrop",
]
SEEDS = (1, 2, 3)
SCALE, LABEL = 3, 260


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kit", type=Path, default=WEIGHTS)
    parser.add_argument("--out", type=Path, default=Path("docs/demo_kit.png"))
    args = parser.parse_args(argv)
    pipe = load_pipeline(args.kit)
    for brand in BRAND_PALETTES:
        pipe.load_lora_weights(args.kit / f"{brand}-style", adapter_name=brand)
    columns = [("seed %d" % s, s, None) for s in SEEDS] + [(brand, SEEDS[0], brand) for brand in BRAND_PALETTES]
    cell = SIZE * SCALE
    sheet = Image.new("RGB", (LABEL + cell * len(columns), 20 + cell * len(PROMPTS)), "white")
    pen = ImageDraw.Draw(sheet)
    for c, (title, _, _) in enumerate(columns):
        pen.text((LABEL + c * cell + 4, 4), title, fill="black")
    for r, prompt in enumerate(PROMPTS):
        pen.text((4, 20 + r * cell + cell // 2 - 6), prompt[:42], fill="black")
        for c, (_, seed, brand) in enumerate(columns):
            if brand:
                pipe.enable_lora()
                pipe.set_adapters([brand], [1.0])
            else:
                pipe.disable_lora()
            image = pipe(prompt, num_inference_steps=STEPS, guidance_scale=GUIDANCE, width=SIZE, height=SIZE,
                         generator=torch.Generator().manual_seed(seed)).images[0]
            sheet.paste(image.resize((cell, cell), Image.NEAREST), (LABEL + c * cell, 20 + r * cell))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
