"""Faults caused for real: the database goes away mid-run, a worker process is killed
mid-batch, four runs write to one PostgreSQL log and one bucket at once; and secrets stay
out of every output, record and log."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from conftest import POSTGRES_ADMIN_URL, REPO, SESSION_HOME
from ldm_batch.audit import AuditLog
from ldm_batch.cli import app
from ldm_batch.config import Settings
from ldm_batch.storage import ObjectStore

SHEET = ("asset_id,prompt,brand,variants,seed\n"
         "f-1,a red circle on a white background,acme,2,1\n"
         "f-2,a blue square on a yellow background,globex,1,2\n")


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def ldm_batch_process(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    with log.open("w") as out:
        return subprocess.Popen([sys.executable, "-m", "ldm_batch", *args], env=env, cwd=REPO, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def process_env(tmp_path: Path, name: str, **overrides) -> dict:
    """The test's settings for a separate process, with its own home and Prefect server."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(LDM_BATCH_HOME=str(tmp_path / name), PREFECT_HOME=str(tmp_path / name / "prefect"), **overrides)
    return env


def objects_match_records(settings: Settings, records: list[dict]) -> None:
    """One image object per stored image record, holding the recorded bytes, and no other image."""
    store = ObjectStore(settings)
    stored = [r for r in records if r["s3_key"]]
    assert sorted(store.image_keys()) == sorted(r["s3_key"] for r in stored)
    for record in stored:
        assert hashlib.sha256(store.get(record["s3_key"])).hexdigest() == record["image_sha256"]


def test_database_outage_mid_run_delivers_nothing_unaudited(prefect_harness, settings, postgres_url, tmp_path,
                                                            monkeypatch):
    from ldm_batch import progress

    monkeypatch.setenv("LDM_BATCH_DATABASE_URL", postgres_url)
    database = make_url(postgres_url).database
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")

    def cut_the_database(event, n):
        if event == "planned":
            with admin.connect() as connection:
                connection.execute(text(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false'))
                connection.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                        "WHERE datname = :name"), {"name": database})

    sheet = tmp_path / "outage.csv"
    sheet.write_text(SHEET)
    stop_listening = progress.listen(cut_the_database)
    try:
        result = cli("run", sheet, "--campaign", "dbdown")
    finally:
        stop_listening()
    assert result.exit_code == 1 and "not currently accepting connections" in result.output
    assert ObjectStore(Settings()).image_keys() == []  # generated, but nothing delivered without its record

    with admin.connect() as connection:
        connection.execute(text(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true'))
    admin.dispose()
    again = cli("run", sheet, "--campaign", "dbdown", "--json")
    assert again.exit_code == 0, again.output
    records = AuditLog(postgres_url).query(kind="image")
    assert len(records) == 3 and len({r["image_key"] for r in records}) == 3
    objects_match_records(Settings(), records)
    assert cli("audit", "verify", "--objects").exit_code == 0


def test_a_killed_run_leaves_no_prefect_server_behind(tmp_path):
    """`ldm-batch run` starts a Prefect server of its own; killed with SIGKILL, the run cannot
    stop it, so the kernel does (Linux: setpriv --pdeathsig). It used to live on, one more per
    killed run."""
    script = ("import os, signal, sys; from pathlib import Path\n"
              "from ldm_batch.serve import prefect_server, free_port\n"
              "with prefect_server(Path(sys.argv[1]), free_port(), services=False) as server:\n"
              "    server.ready(); print(server.process.pid, flush=True); os.kill(os.getpid(), signal.SIGKILL)\n")
    run = subprocess.run([sys.executable, "-c", script, str(tmp_path / "prefect")], capture_output=True, text=True,
                         timeout=180)
    assert run.returncode == -signal.SIGKILL, run.stderr
    server = int(run.stdout.split()[0])
    deadline = time.monotonic() + 30
    while _running(server) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _running(server), f"the Prefect server {server} outlived its killed parent"


def _running(pid: int) -> bool:
    """The process exists and is not a zombie (reaped by init)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def test_killed_worker_resumes_without_duplicates(prefect_harness, settings, tmp_path):
    sheet = tmp_path / "long.csv"
    sheet.write_text("asset_id,prompt,variants,seed\n"
                     "k-1,a red circle on a white background,16,1\n"
                     "k-2,a green star on a black background,16,2\n")
    env = process_env(tmp_path, "worker", LDM_BATCH_BATCH_SIZE="1")
    worker = ldm_batch_process(["run", str(sheet), "--campaign", "killed"], env, tmp_path / "worker.log")
    log = AuditLog(settings.audit_url)
    deadline = time.monotonic() + 300
    done = []
    while len(done) < 3 and worker.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
        try:
            done = log.query(kind="image")
        except Exception:  # the worker has not created the tables yet
            pass
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait()
    audited_at_kill = len(log.query(kind="image"))
    assert worker.returncode == -signal.SIGKILL and 3 <= audited_at_kill < 32, (tmp_path / "worker.log").read_text()

    # the next run (its own process home here, so the dead worker's spool is handed over first)
    spool = tmp_path / "worker" / "spool"
    os.environ["LDM_BATCH_HOME"] = str(tmp_path / "worker")
    try:
        result = cli("run", sheet, "--campaign", "killed", "--json")
    finally:
        os.environ["LDM_BATCH_HOME"] = str(SESSION_HOME)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["images_generated"] == 32 - audited_at_kill  # only what had no record
    records = log.query(kind="image")
    assert len(records) == 32 and len({r["image_key"] for r in records}) == 32
    objects_match_records(Settings(), records)
    assert not list(spool.rglob("*.png"))
    assert cli("audit", "verify", "--objects").exit_code == 0


def test_four_runs_at_once_into_one_postgres_log_and_bucket(settings, postgres_url, tmp_path):
    workers = []
    for i in range(4):
        sheet = tmp_path / f"sheet{i}.csv"
        sheet.write_text(f"asset_id,prompt,seed\nc{i}-1,a red circle on a white background,{i}\n"
                         f"c{i}-2,a purple triangle on a green background,{i}\n")
        env = process_env(tmp_path, f"run{i}", LDM_BATCH_DATABASE_URL=postgres_url)
        workers.append(ldm_batch_process(["run", str(sheet), "--campaign", f"conc{i}"], env,
                                         tmp_path / f"run{i}.log"))
    for i, worker in enumerate(workers):
        assert worker.wait(timeout=600) == 0, (tmp_path / f"run{i}.log").read_text()[-3000:]
    log = AuditLog(postgres_url)
    report = log.verify()
    assert report.ok, report.problems
    records = log.query(kind="image")
    assert len(records) == 8 and len({r["image_key"] for r in records}) == 8
    seqs = sorted(r["seq"] for kind in ("image", "row", "run") for r in log.query(kind=kind))
    assert seqs == list(range(1, 8 + 2 * 4 + 1))  # one chain, no gaps: images and each run's start and end
    objects_match_records(settings, records)


def test_secrets_stay_out_of_outputs_records_and_logs(prefect_harness, settings, postgres_url, tmp_path,
                                                      monkeypatch):
    password = "pw-" + uuid.uuid4().hex  # trust auth accepts it; it must never be shown
    monkeypatch.setenv("LDM_BATCH_DATABASE_URL",
                       make_url(postgres_url).set(password=password).render_as_string(hide_password=False))
    s3_secret = settings.s3_secret_access_key.get_secret_value()
    sheet = tmp_path / "secrets.csv"
    sheet.write_text(SHEET)
    outputs = [cli("run", sheet, "--campaign", "secrets", "--json"), cli("run", sheet, "--campaign", "secrets"),
               cli("audit", "query", "--format", "json"), cli("audit", "explain", "f-1"), cli("audit", "verify")]
    assert outputs[0].exit_code == 0, outputs[0].output
    monkeypatch.setenv("LDM_BATCH_S3_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens: the run fails
    outputs.append(cli("run", sheet, "--campaign", "secrets"))
    assert outputs[-1].exit_code == 1
    seen = [o.output for o in outputs]

    engine = create_engine(postgres_url)
    with engine.connect() as connection:
        for table in ("runs", "audit_records", "lora_uses", "reviews"):
            seen += [repr(row) for row in connection.execute(text(f"SELECT * FROM {table}"))]
    engine.dispose()
    seen += [path.read_bytes().decode("utf-8", "replace") for path in SESSION_HOME.rglob("*") if path.is_file()]
    from prefect import get_client

    with get_client(sync_client=True) as client:
        seen += [repr(run.parameters) for run in client.read_flow_runs()]
        seen += [log.message for log in client.read_logs()]
    assert len(seen) > 10
    leaks = [text_ for text_ in seen if password in text_ or s3_secret in text_]
    assert not leaks, leaks[0][:500]


def test_filters_cannot_inject_sql(settings, tmp_path):
    """Filters are bound parameters: quotes, wildcards and SQL in them match nothing."""
    from ldm_batch.audit import AuditRecord

    log = AuditLog(settings.audit_url)
    log.migrate()
    log.append([AuditRecord(kind="row", run_id="r", campaign="c", sheet="s.csv", sheet_row=1, asset_id="a-1",
                            decision="blocked", prompt="100% cotton", text_verdict={},
                            created_at="2026-11-23T00:00:00+00:00")])
    for hostile in ("x' OR '1'='1", "c'; DROP TABLE audit_records; --", "%", "_"):
        assert log.query(campaign=hostile) == [] and log.query(reviewer=hostile) == []
        assert cli("audit", "query", "--campaign", hostile, "--format", "json").stdout == ""
    assert log.query(text="%") and not log.query(text="_ cotton")  # LIKE wildcards are escaped
    assert log.verify().ok and len(log.query()) == 1
