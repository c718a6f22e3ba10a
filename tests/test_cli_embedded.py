"""The console script on the embedded default: the CLI starts SeaweedFS itself, runs the
Prefect flow on an ephemeral server, and answers the JSON contract other tools rely on."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import REPO, free_base_port


def ldm_batch(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ldm_batch", *args], capture_output=True, text=True,
                          env=env, timeout=600, cwd=REPO)


def test_run_json_contract_then_query_the_audit_log(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("LDM_BATCH_")}
    env.update(LDM_BATCH_HOME=str(tmp_path / "home"), LDM_BATCH_EMBEDDED_S3_PORT=str(free_base_port()),
               LDM_BATCH_DATABASE_URL=f"sqlite:///{tmp_path / 'audit.db'}", PREFECT_HOME=str(tmp_path / "prefect"))
    env.pop("PREFECT_API_URL", None)  # the CLI must start its own ephemeral server

    result = ldm_batch("run", "examples/campaign_small.csv", "--campaign", "cli", "--json", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert {k: summary[k] for k in ("rows", "prompts_blocked", "images", "images_stored", "errors")} == {
        "rows": 5, "prompts_blocked": 1, "images": 5, "images_stored": 5, "errors": []}
    assert summary["images_delivered"] + summary["images_blocked"] == 5

    query = ldm_batch("audit", "query", "--campaign", "cli", "--kind", "image", "--format", "json", env=env)
    records = [json.loads(line) for line in query.stdout.splitlines()]
    assert len(records) == 5 and {r["run_id"] for r in records} == {summary["run_id"]}

    csv_file, parquet_file = tmp_path / "audit.csv", tmp_path / "audit.parquet"
    assert ldm_batch("audit", "query", "--format", "csv", "--out", str(csv_file), env=env).returncode == 0
    assert ldm_batch("audit", "query", "--format", "parquet", "--out", str(parquet_file), env=env).returncode == 0
    import pandas as pd

    assert len(pd.read_csv(csv_file)) == len(pd.read_parquet(parquet_file)) == 6

    exported = tmp_path / "exported"
    assert ldm_batch("store", "export", str(exported), "--prefix", "delivery/cli/", env=env).returncode == 0
    assert len(list(exported.rglob("*.png"))) == summary["images_delivered"]

    verify = ldm_batch("audit", "verify", "--json", env=env)
    assert verify.returncode == 0 and json.loads(verify.stdout)["records"] == 8  # and the run's start and end
