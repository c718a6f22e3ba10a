"""Operation on a real local Prefect server: `ldm-batch serve` (SeaweedFS, Prefect server,
process work pool, a worker with its GPU concurrency limit, the deployments), a sheet
submitted through the inbox-sweep deployment, and a run spread over a Dask LocalCluster
of two worker processes that gives the same images as one process."""

from __future__ import annotations

import json
import os
import signal
import socket
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
from ldm_batch.storage import ObjectStore

SHEET = ("asset_id,prompt,brand,variants,seed\n"
         "op-1,a red circle on a white background,acme,3,1\n"
         "op-2,a blue square on a yellow background,globex,2,2\n"
         "op-3,a green triangle on a purple background,,3,3\n")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    creds = json.loads((home / "seaweedfs" / "credentials.json").read_text())
    client_env = {**env, "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
                  "LDM_BATCH_S3_ENDPOINT_URL": f"http://127.0.0.1:{env['LDM_BATCH_EMBEDDED_S3_PORT']}",
                  "LDM_BATCH_S3_ACCESS_KEY_ID": creds["access_key_id"],
                  "LDM_BATCH_S3_SECRET_ACCESS_KEY": creds["secret_access_key"]}
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


def test_submitted_sheet_runs_on_the_worker_under_the_gpu_limit(stack, tmp_path):
    sheet = tmp_path / "served.csv"
    sheet.write_text(SHEET)
    submitted = ldm_batch(stack, "submit", str(sheet))
    run_id = submitted["flow_run_id"]
    deadline = time.monotonic() + 400
    while (state := api(stack, f"/flow_runs/{run_id}")["state"]["type"]) not in ("COMPLETED", "FAILED", "CRASHED"):
        assert time.monotonic() < deadline, f"flow run {run_id} still {state}"
        time.sleep(2)
    assert state == "COMPLETED"

    settings = settings_of(stack)
    store = ObjectStore(settings)
    # the inbox-sweep schedule (every 5 minutes) may have claimed the sheet first: wait for its report
    deadline = time.monotonic() + 300
    while not (reports := [k for k in store.keys("inbox/processed/") if k.endswith(".report.json")]):
        assert time.monotonic() < deadline, store.keys("inbox/")
        time.sleep(2)
    [report_key] = reports
    report = json.loads(store.get(report_key))
    assert report["images_stored"] == 8 and Inbox(store).waiting() == []
    assert len(AuditLog(settings.audit_url).query(run_id=report["run_id"], kind="image")) == 8

    # every batch generated holding the worker's GPU slot, one batch at a time
    batches, held = 3, []  # one per LoRA set (acme, globex, none), each within the batch size of 4
    deadline = time.monotonic() + 60
    while len(held) < 2 * batches and time.monotonic() < deadline:  # events reach the server a little later
        time.sleep(1)
        held = slot_events(stack, f"gpu-{socket.gethostname()}-0")
    assert [kind for _, kind in held] == ["acquired", "released"] * batches


def slot_events(stack: dict, slot: str) -> list[tuple[str, str]]:
    """(time, "acquired" or "released") of a concurrency limit, in order; on a tie, a
    release sorts before an acquire (a slot handed on at once)."""
    events = api(stack, "/events/filter", {"filter": {"event": {"prefix": ["prefect.concurrency-limit."]}},
                                           "limit": 50})["events"]
    kinds = [(e["occurred"], e["event"].rsplit(".", 1)[-1]) for e in events
             if e["resource"].get("prefect.resource.name") == slot]
    return sorted(((when, kind) for when, kind in kinds if kind in ("acquired", "released")),
                  key=lambda event: (event[0], event[1] == "acquired"))


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
