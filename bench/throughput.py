"""Throughput: the whole product against plain diffusers loops, same model, same jobs.

    .venv/bin/python bench/throughput.py [--images 64] [--batch 8] [--json]

One process, the demo kit, a mixed-brand sheet (acme, globex, no brand, in turn: the worst
case for LoRA switching), 20 steps at 32x32. Three ways to make the same images:

- flow: `campaign_batch` - text screen, plan, batched generation, CLIP image screen, PNG
  provenance, audit records (SQLite), S3 puts (the embedded SeaweedFS) - on a fresh
  campaign after a warm-up run, so models are loaded once as in a long-lived worker;
- batched: a hand-written loop that groups the prompts by brand, switches LoRAs with
  `set_adapters`, and calls the pipeline `--batch` prompts at a time with one generator each;
- naive: one pipeline call per prompt, loading the brand's LoRA with `load_lora_weights`
  whenever the brand changes (and unloading it), as a user would write it.

Prints images/s of each and the ratios `flow_vs_batched_diffusers` and `flow_vs_naive_loop`.
Time is noisy on a shared 2-core machine: compare ratios from one run, not absolute rates.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from ldm_batch.catalog import resolve
from ldm_batch.config import REPO_POLICIES
from ldm_batch.policies import load_policies

BRANDS = ["acme", "globex", ""]
COLOURS = ["red", "blue", "green", "yellow", "purple", "orange"]
SHAPES = ["circle", "square", "triangle", "star", "heart"]


def sheet_rows(n: int) -> list[tuple[str, str, str]]:
    rows = []
    for i in range(n):
        fg, bg = COLOURS[i % len(COLOURS)], COLOURS[(i * 3 + 1) % len(COLOURS)]
        bg = bg if bg != fg else COLOURS[(i + 1) % len(COLOURS)]
        rows.append((f"a-{i:03d}", f"a {fg} {SHAPES[i % len(SHAPES)]} on a {bg} background", BRANDS[i % 3]))
    return rows


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def run_flow(rows, batch: int, home: Path) -> float:
    from ldm_batch.embedded_s3 import embedded_s3
    from ldm_batch.orchestration import configure_prefect

    configure_prefect(home)
    os.environ.update(LDM_BATCH_HOME=str(home), LDM_BATCH_BATCH_SIZE=str(batch))
    sheet = home / "bench.csv"
    sheet.write_text("asset_id,prompt,brand,seed\n" + "".join(f"{a},{p},{b},{i}\n" for i, (a, p, b) in enumerate(rows)))
    with embedded_s3(home, 28333) as server:
        os.environ.update(LDM_BATCH_S3_ENDPOINT_URL=server.endpoint_url, LDM_BATCH_S3_ACCESS_KEY_ID=server.access_key_id,
                          LDM_BATCH_S3_SECRET_ACCESS_KEY=server.secret_access_key)
        from flows.campaign_batch import campaign_batch

        campaign_batch(sheet=str(sheet), campaign="warmup")  # loads every model once
        started = time.perf_counter()
        summary = campaign_batch(sheet=str(sheet), campaign="measured")
        seconds = time.perf_counter() - started
    if summary["images_generated"] != len(rows):
        raise SystemExit(f"the flow made {summary['images_generated']} of {len(rows)} images: {summary['refused']}")
    return seconds


def load_pipeline():
    from diffusers import StableDiffusionPipeline

    policies = load_policies(REPO_POLICIES)
    pipe = StableDiffusionPipeline.from_pretrained(resolve(policies.models["demo-tiny-sd"].source, None),
                                                   dtype=torch.float32, safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    loras = {b: resolve(policies.brands[b].loras[0].source, None) for b in ("acme", "globex")}
    return pipe, loras


def call(pipe, prompts: list[str], seeds: list[int]):
    return pipe(prompt=prompts, num_inference_steps=20, guidance_scale=5.0, width=32, height=32,
                generator=[torch.Generator().manual_seed(s) for s in seeds]).images


def run_batched(rows, batch: int) -> float:
    pipe, loras = load_pipeline()
    for brand, path in loras.items():
        pipe.load_lora_weights(path, adapter_name=brand)
    call(pipe, ["warm up"], [0])

    def loop():
        for brand in BRANDS:
            chosen = [(i, p) for i, (_, p, b) in enumerate(rows) if b == brand]
            if brand:
                pipe.enable_lora()
                pipe.set_adapters([brand], [1.0])
            else:
                pipe.disable_lora()
            for start in range(0, len(chosen), batch):
                part = chosen[start:start + batch]
                call(pipe, [p for _, p in part], [i for i, _ in part])

    return timed(loop)


def run_naive(rows) -> float:
    pipe, loras = load_pipeline()
    call(pipe, ["warm up"], [0])

    def loop():
        current = ""
        for i, (_, prompt, brand) in enumerate(rows):
            if brand != current:
                if current:
                    pipe.unload_lora_weights()
                if brand:
                    pipe.load_lora_weights(loras[brand])
                current = brand
            call(pipe, [prompt], [i])

    return timed(loop)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = sheet_rows(args.images)
    with tempfile.TemporaryDirectory(prefix="throughput-") as home:
        flow = run_flow(rows, args.batch, Path(home))
    batched = run_batched(rows, args.batch)
    naive = run_naive(rows)
    rate = {name: round(args.images / seconds, 2) for name, seconds in
            (("flow", flow), ("batched_diffusers", batched), ("naive_loop", naive))}
    report = {"images": args.images, "batch": args.batch, "threads": torch.get_num_threads(),
              "images_per_second": rate,
              "flow_vs_batched_diffusers": round(rate["flow"] / rate["batched_diffusers"], 3),
              "flow_vs_naive_loop": round(rate["flow"] / rate["naive_loop"], 3)}
    print(json.dumps(report) if args.json else json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
