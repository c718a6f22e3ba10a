"""A local stack shaped like production, on 127.0.0.1 (`ldm-batch serve`, `make serve`).

    SeaweedFS (the embedded S3 of this home)
    prefect server start                       state under <home>/prefect-server
    dask scheduler                             127.0.0.1, for the GPU workers below
    per GPU i: a Dask worker gpu-i (one process, one thread, CUDA_VISIBLE_DEVICES=i) that
               keeps its models, LoRAs and screens loaded across flow runs
    work pool `gpu` (type process)
    per GPU i: global concurrency limit gpu-<host>-<i> (limit 1) and a worker gpu-<i>
               (CUDA_VISIBLE_DEVICES=i, LDM_BATCH_GPU_SLOT=gpu-<host>-<i>)
    prefect --no-prompt deploy --all           campaign-batch and the inbox-sweep schedule

A Prefect process worker starts a fresh process for every flow run; the flow run sends its
batches to the Dask workers (LDM_BATCH_DASK_ADDRESS), which live as long as the stack, so a
second sheet finds its model loaded. A Dask worker runs one batch at a time on its GPU.
Each step is the CLI command the README lists, so an operator can run them by hand.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from ldm_batch.config import Settings
from ldm_batch.embedded_s3 import EmbeddedS3, embedded_s3

REPO = Path(__file__).resolve().parent.parent
WORK_POOL = "gpu"  # the pool prefect.yaml's deployments name


def prefect_command(*args: str) -> list[str]:
    return [str(Path(sys.executable).with_name("prefect")), *args]


def gpu_slot_name(index: int) -> str:
    return f"gpu-{socket.gethostname()}-{index}"


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count()


@dataclass
class PrefectServer:
    """A `prefect server start` subprocess; `ready()` waits until its API answers."""

    api: str
    process: subprocess.Popen
    log: Path
    timeout: float

    def ready(self) -> str:
        _wait_healthy(self.api, self.process, self.log, self.timeout)
        return self.api


@contextmanager
def prefect_server(state: Path, port: int, services: bool = True, timeout: float = 120.0) -> Iterator[PrefectServer]:
    """`prefect server start` on 127.0.0.1 for the block, its database under `state`. Yields
    at once: starting takes seconds (imports, database migrations), so a command can do its
    own start-up meanwhile and call `ready()` when it needs the API. Without `services`, the
    API alone (no scheduler or other loops): what a server for one command's flow run needs."""
    state = state.resolve()
    state.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PREFECT_HOME": str(state), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "DO_NOT_TRACK": "1", "PREFECT_UI_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    command = ["server", "start", "--host", "127.0.0.1", "--port", str(port)] + ([] if services else ["--no-services"])
    with open(state / "server.log", "ab") as log:
        process = subprocess.Popen(_ended_with_this_process(prefect_command(*command)), env=env, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield PrefectServer(f"http://127.0.0.1:{port}/api", process, state / "server.log", timeout)
    finally:
        _stop(process)


def _ended_with_this_process(command: list[str]) -> list[str]:
    """The command, on Linux run through util-linux's `setpriv --pdeathsig TERM`: the kernel
    sends it SIGTERM when the thread that started it ends, so a server never outlives its
    `ldm-batch` process, even one killed with SIGKILL (whose `finally` never runs)."""
    setpriv = shutil.which("setpriv") if sys.platform == "linux" else None
    return [setpriv, "--pdeathsig", "TERM", "--", *command] if setpriv else command


def _wait_healthy(api: str, process: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the Prefect server exited with code {process.returncode}; see {log}")
        try:
            if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"the Prefect server did not answer on {api} within {timeout:.0f}s; see {log}")


def stack_environment(settings: Settings, s3: EmbeddedS3, api: str) -> dict[str, str]:
    """What the CLI, the deploy step and the workers of this stack share."""
    return {**os.environ, "PREFECT_API_URL": api, "LDM_BATCH_HOME": str(settings.home.resolve()),
            "LDM_BATCH_CHECKOUT": str(REPO), "LDM_BATCH_S3_ENDPOINT_URL": s3.endpoint_url,
            "LDM_BATCH_S3_ACCESS_KEY_ID": s3.access_key_id, "LDM_BATCH_S3_SECRET_ACCESS_KEY": s3.secret_access_key}


def prepare(env: dict[str, str], slots: list[str]) -> None:
    """Work pool, one concurrency limit per GPU, deployments (all of them repeatable)."""
    _check(prefect_command("work-pool", "create", WORK_POOL, "--type", "process", "--overwrite"), env)
    for slot in slots:
        created = subprocess.run(prefect_command("gcl", "create", slot, "--limit", "1"), env=env,
                                 capture_output=True, text=True)
        if created.returncode != 0 and "already exists" not in created.stdout + created.stderr:
            raise RuntimeError(f"prefect gcl create {slot} failed: {created.stdout}{created.stderr}")
    _check(prefect_command("--no-prompt", "deploy", "--all"), env, cwd=REPO)


def _check(command: list[str], env: dict[str, str], cwd: Path | None = None) -> None:
    done = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[1:])} failed:\n{(done.stdout + done.stderr)[-3000:]}")


@contextmanager
def worker(env: dict[str, str], index: int, slot: str, log: Path) -> Iterator[subprocess.Popen]:
    """`prefect worker start --pool gpu` pinned to one GPU and its concurrency limit."""
    # polls for new flow runs every 2 s, not Prefect's 10 s: a submitted sheet starts sooner, and on a
    # local server a poll costs nothing
    worker_env = {"PREFECT_WORKER_QUERY_SECONDS": "2", **env, "CUDA_VISIBLE_DEVICES": str(index),
                  "LDM_BATCH_GPU_SLOT": slot}
    with open(log, "ab") as out:
        process = subprocess.Popen(prefect_command("worker", "start", "--pool", WORK_POOL, "--name", f"gpu-{index}"),
                                   env=worker_env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        yield process
    finally:
        _stop(process, signals=2)  # a Prefect worker stops on its second SIGTERM


def _stop(process: subprocess.Popen, signals: int = 1) -> None:
    for sent in range(1, signals + 1):
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            if sent < signals:  # give it a second before the next signal
                try:
                    process.wait(timeout=1)
                except subprocess.TimeoutExpired:
                    pass
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@contextmanager
def dask_gpu_workers(env: dict[str, str], gpus: int, home: Path) -> Iterator[str]:
    """`dask scheduler` and one long-lived `dask worker` per GPU (one thread: one batch at a
    time); yields the scheduler's address. The workers load models once, on their first batch."""
    address = f"tcp://127.0.0.1:{free_port()}"
    with ExitStack() as stack, open(home / "dask.log", "ab") as log:
        scheduler = subprocess.Popen([_tool("dask"), "scheduler", "--host", "127.0.0.1", "--port",
                                      address.rsplit(":", 1)[1], "--no-dashboard"], env=env, cwd=REPO, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        stack.callback(_stop, scheduler)
        for index in range(gpus):
            worker_process = subprocess.Popen(
                [_tool("dask"), "worker", address, "--nthreads", "1", "--nworkers", "1", "--name", f"gpu-{index}",
                 "--no-dashboard", "--death-timeout", "60"],
                env={**env, "CUDA_VISIBLE_DEVICES": str(index)}, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
            stack.callback(_stop, worker_process)
        _wait_for_workers(address, gpus, home / "dask.log")
        yield address


def _wait_for_workers(address: str, count: int, log: Path, timeout: float = 120.0) -> None:
    from distributed import Client

    with Client(address, timeout=timeout) as client:
        try:
            client.wait_for_workers(count, timeout=timeout)
        except TimeoutError:
            raise RuntimeError(f"{count} Dask worker(s) did not join {address} within {timeout:.0f}s; see {log}") from None


def _tool(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def local_stack(settings: Settings, port: int, workers: int) -> Iterator[dict[str, str]]:
    """The whole stack for the block; yields the environment a client needs to use it."""
    slots = [gpu_slot_name(i) for i in range(workers)]
    with ExitStack() as stack:
        s3 = stack.enter_context(embedded_s3(settings.home, settings.embedded_s3_port, settings.delivery_prefix))
        api = stack.enter_context(prefect_server(settings.home / "prefect-server", port)).ready()
        env = stack_environment(settings, s3, api)
        env["LDM_BATCH_DASK_ADDRESS"] = stack.enter_context(dask_gpu_workers(env, workers, settings.home.resolve()))
        prepare(env, slots)
        for index, slot in enumerate(slots):
            stack.enter_context(worker(env, index, slot, settings.home.resolve() / f"worker-{index}.log"))
        yield env

