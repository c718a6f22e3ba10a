"""The product as users meet it, against what a user would write (`throughput.py --user-paths`):

(a) `ldm-batch run` of a 78-image, 3-brand sheet in a fresh home, end to end, against a plain
    diffusers script on the same model, sizes, steps and batch size (import, load, LoRAs via
    set_adapters, batched loop), also end to end;
(b) the same `ldm-batch run` again, every image already stored;
(c) two sheets in a row through `ldm-batch serve`: seconds from submitting the second to its
    first image record, and what the stack's GPU worker loaded over both (its load counter);
(d) `ldm-batch validate` of a small sheet, to exit (imports included).

Each is a fresh process, timed by wall clock to exit, on this machine in one sitting.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ldm_batch.serve import free_port

REPO = Path(__file__).resolve().parent.parent
BATCH = 4  # the product's default batch size

PLAIN_SCRIPT = """
import sys, torch
from diffusers import StableDiffusionPipeline
kit = sys.argv[1]
pipe = StableDiffusionPipeline.from_pretrained(kit + "/demo-tiny-sd", dtype=torch.float32, safety_checker=None,
                                               requires_safety_checker=False)
pipe.set_progress_bar_config(disable=True)
for brand in ("acme", "globex"):
    pipe.load_lora_weights(kit + f"/{brand}-style", adapter_name=brand)
rows = [line.split(",") for line in open(sys.argv[2]).read().splitlines()[1:]]
for brand in ("acme", "globex", ""):
    chosen = [(int(seed), prompt) for _, prompt, b, seed in rows if b == brand]
    if brand:
        pipe.enable_lora(); pipe.set_adapters([brand], [1.0])
    else:
        pipe.disable_lora()
    for start in range(0, len(chosen), int(sys.argv[3])):
        part = chosen[start:start + int(sys.argv[3])]
        images = pipe(prompt=[p for _, p in part], num_inference_steps=20, guidance_scale=5.0, width=32, height=32,
                      generator=[torch.Generator().manual_seed(s) for s, _ in part]).images
        for (seed, _), image in zip(part, images):
            image.save(f"{sys.argv[4]}/{brand or 'plain'}-{seed}.png")
"""


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LDM_BATCH_", "PREFECT_"))}
    return {**env, **extra}


def wall(command: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{(done.stdout + done.stderr)[-3000:]}")
    return time.perf_counter() - started


def user_paths(rows: list[tuple[str, str, str]]) -> dict:
    """(a), (b), (d), then (c); `rows` is the sheet's (asset id, prompt, brand)."""
    from ldm_batch.catalog import DEMO_KIT

    ldm = [sys.executable, "-m", "ldm_batch"]
    with tempfile.TemporaryDirectory(prefix="user-paths-") as tmp:
        home = Path(tmp)
        sheet = home / "campaign.csv"
        sheet.write_text("asset_id,prompt,brand,seed\n" + "".join(f"{a},{p},{b},{i}\n" for i, (a, p, b) in enumerate(rows)))
        env = clean_env(LDM_BATCH_HOME=str(home / "cli"), LDM_BATCH_EMBEDDED_S3_PORT=str(free_port()))
        cold = wall(ldm + ["run", str(sheet), "--json"], env)
        rerun = wall(ldm + ["run", str(sheet), "--json"], env)
        (home / "plain").mkdir()
        plain = wall([sys.executable, "-c", PLAIN_SCRIPT, str(DEMO_KIT), str(sheet), str(BATCH), str(home / "plain")],
                     clean_env())
        small = home / "small.csv"
        small.write_text("asset_id,prompt,seed\ns-1,a red circle on a white background,1\n")
        validate = wall(ldm + ["validate", str(small), "--json"], env)
        served = serve_two_sheets(home, rows)
    return {"images": len(rows), "cold_run_seconds": round(cold, 1), "plain_script_seconds": round(plain, 1),
            "cold_run_vs_plain_script": round(plain / cold, 3), "rerun_all_stored_seconds": round(rerun, 1),
            "validate_seconds": round(validate, 2), **served}


def serve_two_sheets(home: Path, rows: list[tuple[str, str, str]]) -> dict:
    """(c): `ldm-batch serve`, a first sheet, then a second and a third: seconds from submitting
    the first two to their first image record, the GPU worker's model loads over all three and its
    memory after each."""
    from datetime import datetime

    import httpx
    import psutil
    from distributed import Client

    from ldm_batch.audit import AuditLog
    from ldm_batch.config import Settings
    from ldm_batch.parts import Parts

    stack_home, port = home / "stack", free_port()
    env = clean_env(LDM_BATCH_HOME=str(stack_home), LDM_BATCH_EMBEDDED_S3_PORT=str(free_port()),
                    PREFECT_HOME=str(home / "prefect-client"))
    stack_home.mkdir()
    log = stack_home / "serve.log"
    with log.open("w") as out:
        serve = subprocess.Popen([sys.executable, "-m", "ldm_batch", "serve", "--port", str(port), "--workers", "1"],
                                 env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while "ready:" not in log.read_text():
            if serve.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"ldm-batch serve did not start:\n{log.read_text()[-3000:]}")
            time.sleep(1)
        text = " ".join(log.read_text().split())
        dask = re.search(r"Dask GPU workers at (tcp://[0-9.:]+)", text).group(1)
        creds = json.loads((stack_home / "seaweedfs" / "credentials.json").read_text())
        client_env = {**env, "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
                      "LDM_BATCH_S3_ENDPOINT_URL": f"http://127.0.0.1:{env['LDM_BATCH_EMBEDDED_S3_PORT']}",
                      "LDM_BATCH_S3_ACCESS_KEY_ID": creds["access_key_id"],
                      "LDM_BATCH_S3_SECRET_ACCESS_KEY": creds["secret_access_key"]}
        audit = AuditLog(Settings(home=stack_home).audit_url)
        audit.migrate()  # the stack's first flow run would make the tables; the polling below needs them now
        seconds, rss, parts = [], [], []
        sheets = [("first", rows[:12]), ("second", [(f"b-{a}", p, b) for a, p, b in rows[12:24]]),
                  ("third", [(f"c-{a}", p, b) for a, p, b in rows[24:36]])]
        for name, part in sheets:
            sheet = home / f"{name}.csv"
            sheet.write_text("asset_id,prompt,brand,seed\n" + "".join(f"{a},{p},{b},{i}\n"
                                                                       for i, (a, p, b) in enumerate(part)))
            started, wall_started = time.perf_counter(), time.time()
            done = subprocess.run([sys.executable, "-m", "ldm_batch", "submit", str(sheet), "--json"],
                                  env=client_env, cwd=REPO, check=True, capture_output=True, text=True)
            submitted = time.perf_counter() - started
            flow_run = json.loads(done.stdout.strip().splitlines()[-1])["flow_run_id"]
            first_image = None
            deadline = time.monotonic() + 600
            while len(found := audit.query(kind="image", asset_id=None, text=None,
                                           campaign=name)) < len(part):
                if first_image is None and found:
                    first_image = time.perf_counter() - started
                if time.monotonic() > deadline:
                    raise SystemExit(f"sheet {name} did not finish; see {stack_home}")
                time.sleep(0.2)
            seconds.append(first_image if first_image is not None else time.perf_counter() - started)
            run = httpx.get(f"{client_env['PREFECT_API_URL']}/flow_runs/{flow_run}").json()
            flow_started = datetime.fromisoformat(run["start_time"]).timestamp() - wall_started
            parts.append({"submit_command": round(submitted, 1), "flow_run_started": round(flow_started, 1),
                          "first_image": round(seconds[-1], 1)})
            with Client(dask) as client:  # the GPU worker's memory once the sheet is done
                (resident,) = client.run(lambda: psutil.Process().memory_info().rss).values()
            rss.append(resident)
        with Client(dask) as client:
            (loads,) = client.run(Parts.model_loads).values()
    finally:
        os.killpg(serve.pid, signal.SIGTERM)
        serve.wait(timeout=120)
    return {"serve_first_sheet_first_image_seconds": round(seconds[0], 1),
            "serve_second_sheet_first_image_seconds": round(seconds[1], 1),
            "serve_second_sheet_seconds_after_submit": parts[1], "serve_gpu_worker_loads": loads,
            "serve_gpu_worker_rss_mb_after_each_sheet": [round(r / 2**20) for r in rss],
            "serve_gpu_worker_rss_growth_pct_sheet_2_to_3": round(100 * (rss[2] - rss[1]) / rss[1], 2)}
