"""Operation on a real local Prefect server: `ldm-batch serve` (SeaweedFS, Prefect server,
a long-lived Dask GPU worker, the process work pool and its worker, the deployments), two
sheets submitted through the inbox-sweep deployment (the second loads no model: the GPU
worker kept them), and a run spread over a Dask LocalCluster of two worker processes that
gives the same images as one process."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from conftest import REPO, free_base_port
from ldm_batch.audit import AuditLog
from ldm_batch.config import Settings
from ldm_batch.inbox import Inbox
from ldm_batch.serve import free_port
from ldm_batch.storage import ObjectStore

SHEET = ("asset_id,prompt,brand,variants,seed\n"
         "op-1,a red circle on a white background,acme,3,1\n"
         "op-2,a blue square on a yellow background,globex,2,2\n"
         "op-3,a green triangle on a purple background,,3,3\n")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """`ldm-batch serve` with one worker, until the module's tests are done."""
    home = tmp_path_factory.mktemp("stack")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "LDM_BATCH_"))}
    env.update(LDM_BATCH_HOME=str(home), LDM_BATCH_EMBEDDED_S3_PORT=str(free_base_port()),
               PREFECT_HOME=str(home / "prefect-client"))
    port = free_port()
    log = home / "serve.log"
    with log.open("w") as out:
        serve = subprocess.Popen([sys.executable, "-m", "ldm_batch", "serve", "--port", str(port), "--workers", "1"],
                                 env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 240
    while "ready:" not in log.read_text():
        assert serve.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(1)
    dask_address = re.search(r"Dask GPU workers at (tcp://[0-9.:]+)", " ".join(log.read_text().split())).group(1)
    creds = json.loads((home / "seaweedfs" / "credentials.json").read_text())
    client_env = {**env, "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
                  "LDM_BATCH_S3_ENDPOINT_URL": f"http://127.0.0.1:{env['LDM_BATCH_EMBEDDED_S3_PORT']}",
                  "LDM_BATCH_S3_ACCESS_KEY_ID": creds["access_key_id"],
                  "LDM_BATCH_S3_SECRET_ACCESS_KEY": creds["secret_access_key"], "DASK_GPU_WORKERS": dask_address}
    yield client_env
    os.killpg(serve.pid, signal.SIGTERM)
    serve.wait(timeout=90)


def api(stack: dict, path: str, body: dict | None = None):
    url = stack["PREFECT_API_URL"] + path
    response = httpx.post(url, json=body or {}, timeout=30) if body is not None else httpx.get(url, timeout=30)
    response.raise_for_status()
    return response.json()


def settings_of(stack: dict, **overrides) -> Settings:
    return Settings(home=Path(stack["LDM_BATCH_HOME"]), s3_endpoint_url=stack["LDM_BATCH_S3_ENDPOINT_URL"],
                    s3_access_key_id=stack["LDM_BATCH_S3_ACCESS_KEY_ID"],
                    s3_secret_access_key=stack["LDM_BATCH_S3_SECRET_ACCESS_KEY"], **overrides)


def ldm_batch(stack: dict, *args: str, **env: str) -> dict:
    done = subprocess.run([sys.executable, "-m", "ldm_batch", *args, "--json"], env={**stack, **env}, cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_deployments_are_served_with_the_inbox_schedule(stack):
    deployments = {d["name"]: d for d in api(stack, "/deployments/filter", {})}
    assert set(deployments) == {"campaign-batch", "inbox-sweep"}
    assert all(d["work_pool_name"] == "gpu" for d in deployments.values())
    [schedule] = deployments["inbox-sweep"]["schedules"]
    assert schedule["schedule"]["cron"] == "*/5 * * * *" and schedule["active"]
    pools = {p["name"]: p["type"] for p in api(stack, "/work_pools/filter", {})}
    assert pools["gpu"] == "process"


def submit_and_wait(stack: dict, sheet: Path, reports: int) -> dict:
    """Submit a sheet through the inbox-sweep deployment; its report, once `reports` are filed."""
    run_id = ldm_batch(stack, "submit", str(sheet))["flow_run_id"]
    deadline = time.monotonic() + 400
    while (state := api(stack, f"/flow_runs/{run_id}")["state"]["type"]) not in ("COMPLETED", "FAILED", "CRASHED"):
        assert time.monotonic() < deadline, f"flow run {run_id} still {state}"
        time.sleep(2)
    assert state == "COMPLETED"
    store = ObjectStore(settings_of(stack))
    # the inbox-sweep schedule (every 5 minutes) may have claimed the sheet first: wait for its report
    deadline = time.monotonic() + 300
    while len(found := [k for k in store.keys("inbox/processed/") if k.endswith(".report.json")]) < reports:
        assert time.monotonic() < deadline, store.keys("inbox/")
        time.sleep(2)
    return json.loads(store.get(next(k for k in found if sheet.name in k)))


def test_submitted_sheets_run_on_the_warm_gpu_worker(stack, tmp_path):
    """Each flow run is a new process of the Prefect worker; its rows and batches go to the
    stack's Dask GPU worker, which loads the model, the brand LoRAs and both screens for the
    first sheet only."""
    from distributed import Client

    from ldm_batch.parts import Parts

    first, second = tmp_path / "served.csv", tmp_path / "served-again.csv"
    first.write_text(SHEET)
    second.write_text(SHEET.replace("op-", "again-").replace(",1\n", ",11\n"))
    report = submit_and_wait(stack, first, 1)
    settings = settings_of(stack)
    assert report["images_stored"] == 8 and Inbox(ObjectStore(settings)).waiting() == []
    assert len(AuditLog(settings.audit_url).query(run_id=report["run_id"], kind="image")) == 8
    report = submit_and_wait(stack, second, 2)
    assert report["images_stored"] == 8

    with Client(stack["DASK_GPU_WORKERS"]) as client:
        (loads,) = client.run(Parts.model_loads).values()  # the one GPU worker's load counter
    assert loads == {"model:demo-tiny-sd": 1, "lora:acme-style": 1, "lora:globex-style": 1, "text-screen": 1,
                     "image-screen": 1}


def test_dask_cluster_of_two_workers_makes_the_same_images(stack, tmp_path):
    sheet = tmp_path / "dask.csv"
    sheet.write_text(SHEET)
    runs = {}
    # one Dask worker against two: both run torch with one thread (Dask's default for its
    # workers); CPU float sums differ in their last bits between thread counts
    for name, extra in {"single": {"LDM_BATCH_DASK_WORKERS": "1"}, "dask": {"LDM_BATCH_DASK_WORKERS": "2"}}.items():
        settings = {"LDM_BATCH_S3_BUCKET": f"op-{name}", "LDM_BATCH_DATABASE_URL": f"sqlite:///{tmp_path / name}.db"}
        summary = ldm_batch(stack, "run", str(sheet), "--campaign", "same", **settings, **extra)
        records = AuditLog(settings["LDM_BATCH_DATABASE_URL"]).query(run_id=summary["run_id"], kind="image")
        runs[name] = (summary, {r["image_key"]: r["image_sha256"] for r in records})
    assert len(runs["single"][0]["workers"]) == 1 and len(runs["dask"][0]["workers"]) == 2
    assert len(runs["dask"][1]) == 8 and runs["dask"][1] == runs["single"][1]
