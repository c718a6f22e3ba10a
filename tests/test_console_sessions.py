"""Console sessions against an attacker with a copied cookie or a password list, over real HTTP
(uvicorn on a free port): signing out and removing a reviewer end sessions at once, failed
sign-ins are throttled, cookies can be marked Secure."""

from __future__ import annotations

import re
import threading
import time

import httpx
import pytest

from ldm_batch.cli import app
from ldm_batch.console.reviewers import Reviewers

PASSWORD = "correct horse battery staple"


def serve(settings, **options):
    import uvicorn

    from ldm_batch.console.app import create_app

    server = uvicorn.Server(uvicorn.Config(create_app(settings, **options), host="127.0.0.1", port=0,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    return server, thread, f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"


@pytest.fixture
def console(settings, tmp_path, monkeypatch):
    monkeypatch.setenv("LDM_BATCH_HOME", str(tmp_path / "home"))
    current = settings.model_copy(update={"home": tmp_path / "home"})
    Reviewers(current.home / "reviewers.json").add("alice", PASSWORD)
    server, thread, url = serve(current)
    yield url, current
    server.should_exit = True
    thread.join(timeout=10)


def csrf(client: httpx.Client, path: str = "/login") -> str:
    return re.search(r'name="csrf" value="([^"]+)"', client.get(path).text)[1]


def sign_in(url: str, password: str = PASSWORD, name: str = "alice") -> tuple[httpx.Client, httpx.Response]:
    client = httpx.Client(base_url=url)
    response = client.post("/login", data={"name": name, "password": password, "csrf": csrf(client)})
    return client, response


def test_a_copied_cookie_stops_working_when_its_reviewer_signs_out(console):
    url, _ = console
    client, response = sign_in(url)
    assert response.status_code == 303 and client.get("/review").status_code == 200
    stolen = dict(client.cookies)
    assert client.post("/logout", data={"csrf": csrf(client, "/review")}).status_code == 303
    with httpx.Client(base_url=url, cookies=stolen) as attacker:
        assert attacker.get("/review").status_code == 303  # back to the sign-in page
        assert attacker.post("/review", data={"key": "k", "decision": "approve", "reason": "r",
                                              "csrf": "x"}).status_code in (303, 403)


def test_a_removed_reviewer_is_signed_out_at_once(console):
    from typer.testing import CliRunner

    url, settings = console
    client, _ = sign_in(url)
    assert client.get("/").status_code == 200
    result = CliRunner().invoke(app, ["reviewer", "remove", "alice"])
    assert result.exit_code == 0, result.output
    assert client.get("/").status_code == 303
    assert sign_in(url)[1].status_code == 401


def test_failed_sign_ins_make_the_name_and_the_address_wait(console):
    url, _ = console
    for _ in range(5):
        assert sign_in(url, "wrong password!!")[1].status_code == 401
    blocked = sign_in(url)[1]  # even the right password waits now
    assert blocked.status_code == 429 and int(blocked.headers["Retry-After"]) >= 1
    assert "too many failed sign-ins" in blocked.text
    time.sleep(int(blocked.headers["Retry-After"]) + 0.2)
    assert sign_in(url)[1].status_code == 303  # after the wait, and the count starts again
    for i in range(20):  # many names from one address: the address waits too
        sign_in(url, "wrong password!!", name=f"guess{i}")
    assert sign_in(url, name="guess-new")[1].status_code == 429


def test_secure_cookies_are_never_sent_in_clear(settings, tmp_path):
    current = settings.model_copy(update={"home": tmp_path / "home"})
    Reviewers(current.home / "reviewers.json").add("alice", PASSWORD)
    server, thread, url = serve(current, secure_cookies=True)
    try:
        with httpx.Client(base_url=url) as client:
            cookie = client.get("/login").headers["set-cookie"].lower()
        assert "secure" in cookie and "httponly" in cookie and "samesite=strict" in cookie
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_a_reviewer_name_with_a_trailing_newline_is_refused(tmp_path):
    with pytest.raises(ValueError):
        Reviewers(tmp_path / "reviewers.json").add("carol\n", PASSWORD)
