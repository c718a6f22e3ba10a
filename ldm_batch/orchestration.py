"""Prefect settings for running offline: call before Prefect is imported.

With no PREFECT_API_URL, Prefect starts a temporary local server per process; these
defaults keep its state under the project's home and stop it calling telemetry hosts.
"""

from __future__ import annotations

import os
from pathlib import Path


def configure_prefect(home: Path) -> None:
    defaults = {
        "PREFECT_HOME": str((home / "prefect").resolve()),
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
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


def start_temporary_server() -> None:
    """Start the temporary Prefect server this process would start at its first flow run,
    now, so that a command can overlap its start (a process that imports Prefect's server
    and migrates its database: seconds) with its own. The flow run finds it running (Prefect
    keeps one per process). Nothing to do when PREFECT_API_URL names a server."""
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        return
    from prefect.server.api.server import SubprocessASGIServer

    SubprocessASGIServer().start()
