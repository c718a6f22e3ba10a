"""Throughput: the whole product against plain diffusers loops, same model, same jobs.

    .venv/bin/python bench/throughput.py [--images 64] [--batch 8] [--json]
    .venv/bin/python bench/throughput.py --family sdxl --size 1024 --images 32 --batch 4   # on a GPU
    .venv/bin/python bench/throughput.py --user-paths --images 78   # as users meet it (bench/user_paths.py)

One process, the demo kit, a mixed-brand sheet (acme, globex, no brand, in turn: the worst
case for LoRA switching), 20 steps at 32x32. Three ways to make the same images:

- flow: `campaign_batch` - text screen, plan, batched generation, CLIP image screen, PNG
  provenance, audit records (SQLite), S3 puts (the embedded SeaweedFS) - on a fresh
  campaign after a warm-up run, so models are loaded once as in a long-lived worker;
- batched: a hand-written loop that groups the prompts by brand, switches LoRAs with
  `set_adapters`, and calls the pipeline `--batch` prompts at a time with one generator each;
- naive: one pipeline call per prompt, loading the brand's LoRA with `load_lora_weights`
  whenever the brand changes (and unloading it), as a user would write it.

Prints images/s of each and the ratios `flow_vs_batched_diffusers` and `flow_vs_naive_loop`,
and besides:

- `lora_switch_ms` (`set_adapters`, what the product does) against `lora_reload_ms`
  (unload + `load_lora_weights`, what the naive loop does);
- `model_loads`: what the flow's worker loaded from disk over both flow runs;
- `rss_growth_pct`: resident memory of a long flow run (`--long` images, brands switching
  every batch), from image 100 to the last;
- `dask_2_workers_speedup`: the flow on a Dask LocalCluster of two worker processes (one
  thread each) over one worker, each warmed up first;
- `cold_start_seconds`: `ldm-batch run` of a one-row sheet in a fresh home, to exit
  (embedded SeaweedFS and Prefect's temporary server start, models load);
- `generator_alone_vs_batched_diffusers`: the product's planner and generator without the
  flow, to tell the generation code's cost from the flow's;
- `flow_gap`: where the warm flow's seconds over the batched loop's go: before its first
  batch, generating, after its last; and the CPU seconds the flow process and the servers
  spent against what the loop's process spent.

The flows talk to a Prefect server started here (`prefect server start`), as in production.
The hand-written loops run on the same one thread the product's torch work runs on
(`ldm_batch.torch_thread`): in a process where two threads have run torch ops, every
pipeline call is slower, so a loop on the main thread after the flow would be slowed by the
flow's thread, and neither would be what a user's one-thread script gets.
Time is noisy on a shared 2-core machine: compare ratios from one run, not absolute rates.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from ldm_batch.catalog import resolve
from ldm_batch.config import REPO_POLICIES
from ldm_batch.policies import load_policies
from ldm_batch.torch_thread import on_torch_thread

BRANDS = ["acme", "globex", ""]
COLOURS = ["red", "blue", "green", "yellow", "purple", "orange"]
SHAPES = ["circle", "square", "triangle", "star", "heart"]


def sheet_rows(n: int, prefix: str = "a") -> list[tuple[str, str, str]]:
    rows = []
    for i in range(n):
        fg, bg = COLOURS[i % len(COLOURS)], COLOURS[(i * 3 + 1) % len(COLOURS)]
        bg = bg if bg != fg else COLOURS[(i + 1) % len(COLOURS)]
        rows.append((f"{prefix}-{i:04d}", f"a {fg} {SHAPES[i % len(SHAPES)]} on a {bg} background", BRANDS[i % 3]))
    return rows


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


CPU_USE: dict[str, dict] = {}  # what `cpu_use` measured, by name


@contextmanager
def cpu_use(name: str) -> Iterator[None]:
    """Wall seconds of the block and the CPU seconds spent meanwhile by this process (the
    flow, or a hand-written loop) and by its child processes (the Prefect server and SeaweedFS
    the bench started): tells how much more work the flow does than a loop, and where."""
    import psutil

    def used() -> tuple[float, float]:
        own = psutil.Process()
        children = 0.0
        for child in own.children(recursive=True):
            try:
                times = child.cpu_times()
                children += times.user + times.system
            except psutil.NoSuchProcess:
                pass
        times = own.cpu_times()
        return times.user + times.system, children

    (own, children), started = used(), time.perf_counter()
    yield
    (own_after, children_after), wall = used(), time.perf_counter() - started
    CPU_USE[name] = {"wall_s": round(wall, 2), "process_cpu_s": round(own_after - own, 2),
                     "servers_cpu_s": round(children_after - children, 2)}


def flow_gap(flow: float, batched: float, phases: dict) -> dict:
    """Where the warm flow's shortfall against the batched loop lies: its phases (before the
    first batch: sheet, text screen, preflight; generating; after the last batch: contact
    sheet, run record, artifacts); the generating phase and the flow's pipeline calls alone
    against the loop (which is nothing but pipeline calls and LoRA switches); and CPU
    seconds: the flow process's (screens, PNG encoding, S3 and audit clients, Prefect's task
    states) and the servers' (Prefect server, SeaweedFS) against the loop process's. CPU
    seconds on top are wall seconds taken from generation on a machine with few cores; wall
    seconds without them are waits."""
    measured, loop = CPU_USE["flow"], CPU_USE["batched"]
    extra = measured["process_cpu_s"] - loop["process_cpu_s"] + measured["servers_cpu_s"]
    return {"flow_wall_gap_s": round(flow - batched, 2), **phases,
            "flow_generating_vs_batched_diffusers": round(batched / phases["generating_s"], 3),
            "pipeline_calls_in_flow_vs_batched_diffusers": round(batched / phases["pipeline_calls_s"], 3),
            "flow_cpu": measured, "batched_cpu": loop, "cores": os.cpu_count(),
            "flow_extra_cpu_s": round(extra, 2)}


def write_sheet(path: Path, rows) -> Path:
    path.write_text("asset_id,prompt,brand,seed\n" + "".join(f"{a},{p},{b},{i}\n" for i, (a, p, b) in enumerate(rows)))
    return path


def flow_seconds(sheet: Path, campaign: str, images: int) -> float:
    return timed_flow(sheet, campaign, images)[0]


def timed_flow(sheet: Path, campaign: str, images: int):
    """Seconds of a flow run of the sheet, and its summary."""
    from flows.campaign_batch import campaign_batch

    started = time.perf_counter()
    summary = campaign_batch(sheet=str(sheet), campaign=campaign)
    seconds = time.perf_counter() - started
    if summary.images_generated != images:
        raise SystemExit(f"the flow made {summary.images_generated} of {images} images: {summary.refused}")
    return seconds, summary


def pipeline_seconds(run_id: str) -> float:
    """Seconds the run's pipeline calls took, from its image records (`generation_seconds`:
    each image's share of its batch's call, timed on the torch thread)."""
    from ldm_batch.config import Settings
    from ldm_batch.parts import Parts

    return sum(r["generation_seconds"] for r in Parts.of(Settings()).audit.query(run_id=run_id, kind="image"))


def run_flow(rows, home: Path) -> tuple[float, dict[str, int], dict]:
    """Seconds of a flow run after a warm-up run (models loaded once, as in a long-lived
    worker), what the worker loaded from disk over both, and the run's phases: seconds before
    generation starts, generating (to the last batch's images), and after; and the seconds
    of its pipeline calls."""
    from ldm_batch import progress
    from ldm_batch.parts import Parts

    sheet = write_sheet(home / "bench.csv", rows)
    flow_seconds(sheet, "warmup", len(rows))
    times: dict[str, float] = {}

    def on_event(event: str, n: int) -> None:
        times.setdefault(event, time.perf_counter())  # "planned": generation starts
        if event == "image":
            times["last_image"] = time.perf_counter()

    stop = progress.listen(on_event)
    try:
        with cpu_use("flow"):
            started = time.perf_counter()
            seconds, summary = timed_flow(sheet, "measured", len(rows))
    finally:
        stop()
    phases = {"before_generation_s": round(times["planned"] - started, 2),
              "generating_s": round(times["last_image"] - times["planned"], 2),
              "after_generation_s": round(started + seconds - times["last_image"], 2),
              "pipeline_calls_s": round(pipeline_seconds(summary.run_id), 2)}
    loads = sum((parts.generator.loads for parts in Parts.loaded()), Counter())
    return seconds, dict(loads), phases


def rss_mib() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def rss_growth(images: int, home: Path) -> dict:
    """Resident memory over a long flow run, sampled as batches finish."""
    from ldm_batch import progress

    samples, done = [], [0]

    def on_event(event: str, n: int) -> None:
        if event == "image":
            done[0] += n
            samples.append((done[0], rss_mib()))

    stop = progress.listen(on_event)
    try:
        flow_seconds(write_sheet(home / "long.csv", sheet_rows(images, prefix="l")), "long", images)
    finally:
        stop()
    start = next(rss for n, rss in samples if n >= 100)
    return {"long_run_images": images, "rss_mib_at_100": round(start, 1), "rss_mib_at_end": round(samples[-1][1], 1),
            "rss_growth_pct": round(100 * (samples[-1][1] - start) / start, 2)}


def dask_speedup(rows, home: Path) -> dict:
    """Images/s of the flow on a LocalCluster of two single-thread workers over one."""
    from distributed import LocalCluster

    rates = {}
    for n in (1, 2):
        with LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
            os.environ["LDM_BATCH_DASK_ADDRESS"] = cluster.scheduler_address
            try:
                sheet = write_sheet(home / f"dask-{n}.csv", rows)
                flow_seconds(sheet, f"dask-{n}-warmup", len(rows))  # each worker loads the models
                rates[n] = len(rows) / flow_seconds(sheet, f"dask-{n}", len(rows))
            finally:
                del os.environ["LDM_BATCH_DASK_ADDRESS"]
    return {"images_per_second_1_worker": round(rates[1], 2), "images_per_second_2_workers": round(rates[2], 2),
            "dask_2_workers_speedup": round(rates[2] / rates[1], 3)}


def cold_start(home: Path) -> float:
    """`ldm-batch run` of a one-row sheet in a fresh home with the embedded defaults, to exit."""
    sheet = write_sheet(home / "one.csv", sheet_rows(1))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LDM_BATCH_", "PREFECT_"))}
    env.update(LDM_BATCH_HOME=str(home / "cold"), LDM_BATCH_EMBEDDED_S3_PORT="28433")
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "ldm_batch", "run", str(sheet), "--json"], env=env, check=True,
                   capture_output=True)
    return time.perf_counter() - started


def run_generator(rows, batch: int) -> float:
    """The product's own generation code alone (plan, batches, ImageGenerator), no flow:
    tells the flow's overhead apart from the generator's."""
    from ldm_batch.generate import ImageGenerator
    from ldm_batch.plan import group_batches, plan_row
    from ldm_batch.sheets import read_sheet

    policies = load_policies(REPO_POLICIES)
    csv = "asset_id,prompt,brand,seed\n" + "".join(f"{a},{p},{b},{i}\n" for i, (a, p, b) in enumerate(rows))
    sheet = read_sheet("bench.csv", csv.encode(), policies, False)
    batches = group_batches([job for row in sheet.rows for job in plan_row(row, "bench", policies)], batch)
    generator = ImageGenerator(policies, "cpu")
    for each in batches:  # warm-up: loads the model and both LoRAs
        generator.generate(each)
    return timed(lambda: [generator.generate(each) for each in batches])


def lora_switch() -> dict:
    """Milliseconds to switch the active brand: set_adapters against unload + load."""
    pipe, loras = load_pipeline()
    for brand, path in loras.items():
        pipe.load_lora_weights(path, adapter_name=brand)
    brands = list(loras)
    switch = timed(lambda: [pipe.set_adapters([brands[i % 2]], [1.0]) for i in range(100)]) / 100
    pipe.unload_lora_weights()

    def reload(i: int) -> None:
        pipe.unload_lora_weights()
        pipe.load_lora_weights(loras[brands[i % 2]])

    return {"lora_switch_ms": round(switch * 1000, 2),
            "lora_reload_ms": round(timed(lambda: [reload(i) for i in range(10)]) / 10 * 1000, 2)}


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

    with cpu_use("batched"):
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


FAMILIES = {"sdxl": "build_full_size_sdxl", "tiny-sdxl": "build_tiny_sdxl"}


def family_throughput(family: str, size: int, images: int, batch: int, steps: int) -> dict:
    """`--family sdxl --size 1024`: the flow against a plain batched diffusers loop on a
    full-size architecture with random weights (they cost what real ones cost per step), on the
    GPU when there is one. `--family tiny-sdxl` runs the same code in minutes on a CPU."""
    import shutil

    import yaml
    from diffusers import DiffusionPipeline

    from ldm_batch.catalog import weights_sha256
    from ldm_batch.demo_kit import tiny_families

    device = "cuda" if torch.cuda.is_available() else "cpu"
    with tempfile.TemporaryDirectory(prefix="family-") as tmp:
        home = Path(tmp)
        policies = home / "policies"
        shutil.copytree(REPO_POLICIES, policies)
        folder = policies / "loras" / family  # under the catalog's local_weights_roots
        getattr(tiny_families, FAMILIES[family])(folder)
        catalog = yaml.safe_load((policies / "models.yaml").read_text())
        catalog["models"].append({"id": family, "kind": "diffusion", "source": f"./loras/{family}", "revision": "bench",
                                  "sha256": weights_sha256(folder), "license": {"id": "bench", "commercial_use": True},
                                  "defaults": {"width": size, "height": size, "steps": steps, "guidance": 5.0}})
        (policies / "models.yaml").write_text(yaml.safe_dump(catalog, sort_keys=False))
        os.environ.update(LDM_BATCH_POLICIES_DIR=str(policies), LDM_BATCH_DEVICE=device)
        rows = sheet_rows(images)
        sheet = home / "family.csv"
        sheet.write_text("asset_id,prompt,model,seed\n" + "".join(f"{a},{p},{family},{i}\n"
                                                                   for i, (a, p, _) in enumerate(rows)))
        with product(home, batch):
            flow_seconds(sheet, "warmup", images)  # loads the model once, as a long-lived worker does
            flow = flow_seconds(sheet, "measured", images)

        def plain_loop() -> float:
            dtype = torch.float16 if device == "cuda" else torch.float32
            pipe = DiffusionPipeline.from_pretrained(folder, dtype=dtype).to(device)
            pipe.set_progress_bar_config(disable=True)

            def loop():
                for start in range(0, images, batch):
                    part = rows[start:start + batch]
                    pipe(prompt=[p for _, p, _ in part], num_inference_steps=steps, guidance_scale=5.0, width=size,
                         height=size, generator=[torch.Generator(device).manual_seed(start + i) for i in range(len(part))])

            loop()  # warm-up, as the flow had
            return timed(loop)

        plain = on_torch_thread(plain_loop)
    return {"family": family, "size": size, "images": images, "batch": batch, "steps": steps, "device": device,
            "images_per_second": {"flow": round(images / flow, 3), "batched_diffusers": round(images / plain, 3)},
            "flow_vs_batched_diffusers": round(plain / flow, 3)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--long", type=int, default=320, help="images of the memory run")
    parser.add_argument("--family", choices=sorted(FAMILIES), help="only the flow against a plain loop on this "
                        "architecture (sdxl: full size, random weights; for a GPU)")
    parser.add_argument("--size", type=int, default=1024, help="image size with --family")
    parser.add_argument("--steps", type=int, default=30, help="denoising steps with --family")
    parser.add_argument("--user-paths", action="store_true", help="only the cold CLI run against a plain script, "
                        "the rerun with everything stored, two sheets through serve, and validate (bench/user_paths.py)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.user_paths:
        from user_paths import user_paths

        report = user_paths(sheet_rows(args.images))
        print(json.dumps(report) if args.json else json.dumps(report, indent=2))
        return
    if args.family:
        report = family_throughput(args.family, args.size, args.images, args.batch, args.steps)
        print(json.dumps(report) if args.json else json.dumps(report, indent=2))
        return
    rows = sheet_rows(args.images)
    report = {"images": args.images, "batch": args.batch, "threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory(prefix="throughput-") as tmp:
        home = Path(tmp)
        with product(home, args.batch):
            flow, loads, phases = run_flow(rows, home)
            report["model_loads"] = loads
            report.update(rss_growth(args.long, home))
            report.update(dask_speedup(rows, home))
        report["cold_start_seconds"] = round(cold_start(home), 1)
    batched = on_torch_thread(run_batched, rows, args.batch)
    naive = on_torch_thread(run_naive, rows)
    generator = run_generator(rows, args.batch)
    rate = {name: round(args.images / seconds, 2) for name, seconds in
            (("flow", flow), ("batched_diffusers", batched), ("naive_loop", naive), ("generator_alone", generator))}
    report.update({"images_per_second": rate,
                   "flow_vs_batched_diffusers": round(rate["flow"] / rate["batched_diffusers"], 3),
                   "generator_alone_vs_batched_diffusers": round(rate["generator_alone"] / rate["batched_diffusers"], 3),
                   "flow_vs_naive_loop": round(rate["flow"] / rate["naive_loop"], 3), **on_torch_thread(lora_switch),
                   "flow_gap": flow_gap(flow, batched, phases)})
    print(json.dumps(report) if args.json else json.dumps(report, indent=2))


@contextmanager
def product(home: Path, batch: int) -> Iterator[None]:
    """A Prefect server and the embedded SeaweedFS, with the flow's settings in the environment."""
    from ldm_batch.embedded_s3 import embedded_s3
    from ldm_batch.orchestration import configure_prefect
    from ldm_batch.serve import prefect_server

    with prefect_server(home / "prefect-server", 28420) as prefect, embedded_s3(home, 28333) as server:
        api = prefect.ready()
        os.environ.update(PREFECT_API_URL=api, LDM_BATCH_HOME=str(home), LDM_BATCH_BATCH_SIZE=str(batch),
                          LDM_BATCH_SHEET_ROOTS=json.dumps([str(home)]),
                          LDM_BATCH_S3_ENDPOINT_URL=server.endpoint_url, LDM_BATCH_S3_ACCESS_KEY_ID=server.access_key_id,
                          LDM_BATCH_S3_SECRET_ACCESS_KEY=server.secret_access_key)
        configure_prefect(home)
        yield


if __name__ == "__main__":
    main()
