"""The embedded SeaweedFS against a process on the same host without the pipeline's keys:
what the attacker of issue 19 did, port by port. Only the S3 port serves data, and only
with credentials; the data folder is private; a home uses only its own server; SIGTERM
stops the server a command started."""

from __future__ import annotations

import http.server as http_server
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import REPO, free_base_port
from ldm_batch.embedded_s3 import EmbeddedS3Error, embedded_s3, weed_binary
from ldm_batch.storage import ObjectStore

SECRET_PNG = b"\x89PNG quarantined pixels " * 40


def http(method: str, url: str, data: bytes | None = None) -> tuple[int | str, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, method=method), timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError as exc:
        return type(exc).__name__, b""


@pytest.fixture
def stored(s3_server, settings):
    store = ObjectStore(settings)
    store.ensure_bucket()
    store.put_image("quarantine", "c/a/a-v1.png", SECRET_PNG, {})
    return int(s3_server.endpoint_url.rsplit(":", 1)[1]), store


def test_the_filer_and_volume_ports_serve_nothing_without_this_homes_tokens(stored):
    base, store = stored
    bucket, filer, volume = store.bucket, f"http://127.0.0.1:{base + 3}", f"http://127.0.0.1:{base + 2}"
    attempts = {
        "read": http("GET", f"{filer}/buckets/{bucket}/quarantine/c/a/a-v1.png"),
        "list": http("GET", f"{filer}/buckets/{bucket}/quarantine/?pretty=y"),
        "plant": http("POST", f"{filer}/buckets/{bucket}/delivery/c/a/planted.png", b"not ours"),
        "delete": http("DELETE", f"{filer}/buckets/{bucket}/quarantine/c/a/a-v1.png"),
    }
    for what, (status, body) in attempts.items():
        assert status == 401, (what, status, body[:80])
        assert SECRET_PNG[:20] not in body and b"a-v1.png" not in body
    for volume_id in range(1, 8):  # file ids are guessable; their bytes still need a read token
        status, body = http("GET", f"{volume}/{volume_id},0100000000")
        assert status in (401, 404) and SECRET_PNG[:20] not in body
    assert store.get("quarantine/c/a/a-v1.png") == SECRET_PNG
    assert store.head("delivery/c/a/planted.png") is None
    for port in (base + 5, base + 6):  # Iceberg and Lance catalogs are not opened
        assert http("GET", f"http://127.0.0.1:{port}/")[0] == "URLError"
    # every other HTTP port (master, admin, metrics) answers, at most, with topology: no names, no bytes
    for offset in (1, 4, 7):
        for path in ("/", "/dir/status", "/vol/status", f"/buckets/{bucket}/quarantine/c/a/a-v1.png", "/metrics"):
            status, body = http("GET", f"http://127.0.0.1:{base + offset}{path}")
            assert b"a-v1.png" not in body and SECRET_PNG[:20] not in body, (offset, path, status)


def test_grpc_ports_refuse_a_client_without_the_homes_certificate(tmp_path):
    home, base = tmp_path / "home", free_base_port()
    with embedded_s3(home, base) as server:
        from ldm_batch.config import Settings

        store = ObjectStore(server.client_settings(Settings(s3_bucket="sealed")))
        store.ensure_bucket()
        store.put_image("quarantine", "c/a/a-v1.png", SECRET_PNG, {})
        (tmp_path / "elsewhere").mkdir()
        refused = weed_shell(base, "fs.ls /buckets/sealed/quarantine/c/a", tmp_path / "elsewhere", timeout=8)
        assert "a-v1.png" not in refused
        # the home's own certificate (security.toml in its folder) is let in: the port is up
        assert "a-v1.png" in weed_shell(base, "fs.ls /buckets/sealed/quarantine/c/a", home / "seaweedfs")


def weed_shell(base: int, command: str, cwd: Path, timeout: float = 60) -> str:
    """What `weed shell` prints for one command, run from `cwd` (where it looks for security.toml)."""
    try:
        done = subprocess.run([weed_binary(), "shell", f"-master=127.0.0.1:{base + 1}", f"-filer=127.0.0.1:{base + 3}"],
                              input=command + "\n", capture_output=True, text=True, timeout=timeout, cwd=cwd)
        return done.stdout + done.stderr
    except subprocess.TimeoutExpired as exc:  # it keeps retrying a connection it is refused
        return (exc.stdout or b"").decode(errors="replace") + (exc.stderr or b"").decode(errors="replace")


def test_the_data_folder_is_private(tmp_path):
    state = tmp_path / "home" / "seaweedfs"
    (state / "data").mkdir(parents=True)
    (state / "data" / "1.dat").write_bytes(b"left readable by an older version")
    os.chmod(state / "data" / "1.dat", 0o644)
    with embedded_s3(tmp_path / "home", free_base_port()):
        folders = [state, *(p for p in state.rglob("*") if p.is_dir())]
        assert all(stat.S_IMODE(p.stat().st_mode) == 0o700 for p in folders), folders
        assert stat.S_IMODE((state / "data" / "1.dat").stat().st_mode) == 0o600
        for name in ("credentials.json", "security.toml", "node.key", "weed.log"):
            assert stat.S_IMODE((state / name).stat().st_mode) == 0o600, name


class AnswersEverything(http_server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's names
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"<ListAllMyBucketsResult/>")

    do_PUT = do_HEAD = do_POST = do_GET

    def log_message(self, *args):
        pass


def test_a_squatter_or_another_homes_server_on_the_port_is_refused(s3_server, tmp_path):
    port = free_base_port()
    squatter = http_server.ThreadingHTTPServer(("127.0.0.1", port), AnswersEverything)
    threading.Thread(target=squatter.serve_forever, daemon=True).start()
    try:
        with pytest.raises(EmbeddedS3Error) as refused, embedded_s3(tmp_path / "home", port):
            pass
        assert f"port {port}" in str(refused.value) and "LDM_BATCH_EMBEDDED_S3_PORT" in str(refused.value)
    finally:
        squatter.shutdown()
    session_port = int(s3_server.endpoint_url.rsplit(":", 1)[1])
    with pytest.raises(EmbeddedS3Error), embedded_s3(tmp_path / "other-home", session_port):
        pass


def test_sigterm_stops_the_server_a_command_started(tmp_path):
    home, base = tmp_path / "home", free_base_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("LDM_BATCH_")},
           "LDM_BATCH_HOME": str(home), "LDM_BATCH_EMBEDDED_S3_PORT": str(base)}
    subprocess.run([sys.executable, "-m", "ldm_batch", "reviewer", "add", "alice", "--password-stdin"],
                   input="correct horse battery staple\n", env=env, check=True, cwd=REPO, capture_output=True,
                   text=True)
    console = subprocess.Popen([sys.executable, "-m", "ldm_batch", "console", "--port", str(base + 9)], env=env,
                               cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while not _answers(base + 9):
            assert console.poll() is None and time.monotonic() < deadline, console.stdout.read()
            time.sleep(0.2)
        assert _answers(base)  # SeaweedFS is up
        console.send_signal(signal.SIGTERM)
        console.wait(timeout=60)
    finally:
        if console.poll() is None:
            console.kill()
    deadline = time.monotonic() + 20
    while _answers(base) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _answers(base), "SeaweedFS was left running"
    assert not _weed_running(home)


def _answers(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _weed_running(home: Path) -> bool:
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if str(home / "seaweedfs") in cmdline.read_bytes().decode(errors="replace"):
                return True
        except OSError:
            continue
    return False
