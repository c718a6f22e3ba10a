"""Prefect settings for running offline: call before Prefect is imported.

With no PREFECT_API_URL, `ldm-batch run` starts a Prefect server of its own for the command
(`temporary_server`) and other commands get Prefect's temporary server at their first flow
run; these defaults keep its state under the project's home and stop it calling telemetry hosts.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ldm_batch.serve import PrefectServer


# how long a command waits for its Prefect server, in seconds: four runs starting at once on two
# slow cores (AMD EPYC, AVX2) took more than 90
SERVER_STARTUP_TIMEOUT = "180"


def configure_prefect(home: Path) -> None:
    defaults = {
        "PREFECT_HOME": str((home / "prefect").resolve()),
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": SERVER_STARTUP_TIMEOUT,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "DASK_LOGGING__DISTRIBUTED": "warning",  # a Dask cluster's start and stop, line by line
    }
    for name, value in defaults.items():
        os.environ.setdefault(name, value)
    prefect_home = Path(os.environ["PREFECT_HOME"])
    prefect_home.mkdir(parents=True, exist_ok=True)  # Prefect makes only the last level
    if prefect_home.is_relative_to(home.resolve()):  # our state: its database is ours to read only
        os.chmod(prefect_home, 0o700)


# The flows by deployment name, as prefect.yaml's entrypoints name them. The library does not
# import flows/ statically (flows wire ldm_batch, not the other way round); the CLI runs a
# flow in-process by looking it up here.
ENTRYPOINTS = {"campaign-batch": "flows.campaign_batch:campaign_batch", "inbox-sweep": "flows.inbox_sweep:inbox_sweep"}


def local_flow(name: str):
    """The flow object of a deployment name, to run in this process."""
    import importlib

    module, _, attribute = ENTRYPOINTS[name].partition(":")
    return getattr(importlib.import_module(module), attribute)


@contextmanager
def temporary_server(timeout: float | None = None) -> Iterator[PrefectServer | None]:
    """For a command that runs a flow in this process: a Prefect server of its own for the
    block (`prefect server start`, the API alone, its database under PREFECT_HOME), unless
    PREFECT_API_URL names one (then None). It starts at once and this process's
    PREFECT_API_URL names it, so enter this before Prefect is imported; call `ready()` before
    the flow runs. Prefect's own temporary server would start only at the first flow run,
    after this process imported its server module: seconds later, one after another. It waits
    `timeout` seconds for it, by default PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS (the
    timeout Prefect's own temporary server takes; `configure_prefect` sets it)."""
    if timeout is None:
        timeout = float(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", SERVER_STARTUP_TIMEOUT))
    if os.environ.get("PREFECT_API_URL"):
        yield None
        return
    from ldm_batch.serve import free_port, prefect_server

    with prefect_server(Path(os.environ["PREFECT_HOME"]), free_port(), services=False, timeout=timeout) as server:
        os.environ["PREFECT_API_URL"] = server.api
        try:
            yield server
        finally:
            os.environ.pop("PREFECT_API_URL", None)
