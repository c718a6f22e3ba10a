"""The reviewer console in a real browser (Debian's chromium, driven by Playwright): sign in,
filter, open an image's lineage, approve a quarantined image, export; and the guards (sign-in,
CSRF, expiring links) checked over plain HTTP."""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import httpx
import pandas as pd
import pytest

from conftest import REPO
from ldm_batch.audit import AuditLog
from ldm_batch.config import Settings
from ldm_batch.storage import ObjectStore

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(not CHROMIUM.exists() and not os.environ.get("LDM_BATCH_REQUIRE_BROWSER"),
                                reason="Debian's chromium is not installed (apt-get install chromium)")
PASSWORD = "correct horse battery staple"
# Two images made with acme's LoRA, licensed here for non-commercial use only; the first
# draws the protected emblem and is quarantined.
SHEET = ("asset_id,prompt,brand,seed\n"
         "aid-1,white background with a red plus sign,acme,3\n"
         "calm-1,a blue circle on a yellow background,acme,3\n")


@pytest.fixture
def console(prefect_harness, settings, tmp_path, monkeypatch):
    """A finished non-commercial campaign with one image in the queue, reviewer alice, and
    the console served on a free port; yields its base URL."""
    import uvicorn

    from flows.campaign_batch import campaign_batch
    from ldm_batch.console.app import create_app
    from ldm_batch.console.reviewers import Reviewers

    policies = tmp_path / "policies"
    shutil.copytree(REPO / "policies", policies)
    acme = policies / "brands" / "acme.yaml"
    acme.write_text(re.sub(r"license: \{id: Apache-2.0[^}]*\}",
                           "license: {id: CC-BY-NC-4.0, url: https://creativecommons.org/licenses/by-nc/4.0/, "
                           "commercial_use: false}", acme.read_text()))
    monkeypatch.setenv("LDM_BATCH_POLICIES_DIR", str(policies))
    monkeypatch.setenv("LDM_BATCH_HOME", str(tmp_path / "home"))
    sheet = tmp_path / "poster.csv"
    sheet.write_text(SHEET)
    campaign_batch(sheet=str(sheet), campaign="poster", use="non-commercial")
    current = Settings()
    Reviewers(current.home / "reviewers.json").add("alice", PASSWORD)

    server = uvicorn.Server(uvicorn.Config(create_app(current), host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def test_reviewer_clears_the_queue_in_a_browser(console, tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        page = browser.new_page(accept_downloads=True)
        page.goto(f"{console}/review")
        assert page.url.endswith("/login")  # nothing without signing in
        page.fill("input[name=name]", "alice")
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        assert page.locator("tr.run").count() == 1 and "poster" in page.locator("tr.run").inner_text()
        assert "contact sheet" in page.locator("tr.run").inner_text()

        # which images of campaign poster used a model or LoRA not licensed for commercial use?
        page.goto(f"{console}/images")
        page.fill("input[name=campaign]", "poster")
        page.select_option("select[name=commercial]", "no")
        page.click("button:has-text('Filter')")
        page.wait_for_url("**commercial=no**")
        tiles = page.locator(".tile")
        assert tiles.count() == 2
        assert "X-Amz-Expires=300" in tiles.first.locator("img").get_attribute("src")
        assert "LoRA acme-style (CC-BY-NC-4.0)" in tiles.first.inner_text()
        page.click(".tile:has-text('aid-1') a")  # its lineage
        lineage = page.locator("table.lineage").inner_text()
        assert "CC-BY-NC-4.0" in lineage and "seed 3" in lineage and "quarantined" in lineage

        page.goto(f"{console}/images?campaign=poster&commercial=yes")
        assert page.locator(".tile").count() == 0

        page.goto(f"{console}/review")
        assert page.locator("tr.pending").count() == 1
        page.click("button[value=approve]")  # the reason is required: the browser refuses the form
        assert page.locator("tr.pending").count() == 1
        page.fill("input[name=reason]", "first-aid poster, licensed use")
        page.click("button[value=approve]")
        assert "Nothing waits for review" in page.inner_text("main")

        # ... and who approved them?
        page.goto(f"{console}/images?campaign=poster&commercial=no&decision=approved")
        assert page.locator(".tile").count() == 1 and "approved by alice" in page.locator(".tile").inner_text()
        if os.environ.get("LDM_BATCH_CONSOLE_SCREENSHOT"):
            page.goto(f"{console}/images?campaign=poster")
            page.screenshot(path=os.environ["LDM_BATCH_CONSOLE_SCREENSHOT"], full_page=True)
        page.goto(f"{console}/images?campaign=poster&decision=approved")
        with page.expect_download() as download:
            page.click("text=CSV")
        exported = pd.read_csv(download.value.path())
        assert list(exported["asset_id"]) == ["aid-1"] and list(exported["reviewer"]) == ["alice"]
        browser.close()

    settings = Settings()
    log = AuditLog(settings.audit_url)
    (review,) = log.query(kind="review")
    assert (review["decision"], review["reviewer"]) == ("approved", "alice")
    assert "licensed use" in review["reasons"][0]
    delivered = ObjectStore(settings).get(f"delivery/{review['image_key']}")
    assert hashlib.sha256(delivered).hexdigest() == review["image_sha256"]


def test_pages_and_forms_need_a_reviewer_and_a_csrf_token(console):
    with httpx.Client(base_url=console) as client:
        for path in ("/", "/images", "/review", "/export"):
            assert client.get(path).status_code == 303  # to the sign-in page
        assert client.post("/review", data={"key": "x", "decision": "approve", "reason": "r"}).status_code == 303

        login = client.get("/login")
        token = re.search(r'name="csrf" value="([^"]+)"', login.text)[1]
        assert client.post("/login", data={"name": "alice", "password": "wrong password!!", "csrf": token}
                           ).status_code == 401
        assert client.post("/login", data={"name": "alice", "password": PASSWORD, "csrf": "forged"}
                           ).status_code == 403
        assert client.post("/login", data={"name": "alice", "password": PASSWORD, "csrf": token}
                           ).status_code == 303
        queue = client.get("/review")
        key = re.search(r'name="key" value="([^"]+)"', queue.text)[1]
        forged = client.post("/review", data={"key": key, "decision": "approve", "reason": "r", "csrf": "x"})
        assert forged.status_code == 403
        assert AuditLog(Settings().audit_url).query(kind="review") == []  # nothing decided
        parquet = client.get("/export", params={"fmt": "parquet", "campaign": "poster"})
        assert len(pd.read_parquet(io.BytesIO(parquet.content))) == 2


def test_image_links_expire(console):
    settings = Settings()
    store = ObjectStore(settings)
    key = next(k for k in store.keys() if k.startswith("delivery/"))
    url = store.presigned_url(key, expires_seconds=1)
    assert urllib.request.urlopen(url).read()[:4] == b"\x89PNG"
    time.sleep(2.5)
    with pytest.raises(urllib.error.HTTPError) as expired:
        urllib.request.urlopen(url)
    assert expired.value.code == 403


def test_check_a_file_page_gives_the_commands_answer(console, tmp_path):
    """A reviewer uploads a re-encoded copy of a delivered image and gets its record; the
    image page shows the stored object's provenance; uploads need the CSRF token."""
    from PIL import Image
    from typer.testing import CliRunner

    from ldm_batch.cli import app

    settings = Settings()
    (delivered,) = [r for r in AuditLog(settings.audit_url).query(kind="image") if r["decision"] == "delivered"]
    copy = io.BytesIO()
    Image.open(io.BytesIO(ObjectStore(settings).get(delivered["s3_key"]))).convert("RGB").resize((64, 64)).save(
        copy, format="JPEG", quality=85)
    (tmp_path / "copy.jpg").write_bytes(copy.getvalue())
    command = CliRunner().invoke(app, ["provenance", "check", str(tmp_path / "copy.jpg")])
    assert command.exit_code == 0, command.output
    with httpx.Client(base_url=console) as client:
        assert client.get("/provenance").status_code == 303  # signed-in reviewers only
        token = re.search(r'name="csrf" value="([^"]+)"', client.get("/login").text)[1]
        client.post("/login", data={"name": "alice", "password": PASSWORD, "csrf": token})
        form = client.get("/provenance")
        assert 'type="file"' in form.text and '<label for="file">' in form.text
        token = re.search(r'name="csrf" value="([^"]+)"', form.text)[1]  # a new session's token
        files = {"file": ("copy.jpg", copy.getvalue(), "image/jpeg")}
        assert client.post("/provenance", data={"csrf": "forged"}, files=files).status_code == 403
        answer = client.post("/provenance", data={"csrf": token}, files=files)
        assert answer.status_code == 200
        verdict = f"looks like ours: poster/{delivered['asset_id']}, delivered; no mark survived"
        assert verdict in answer.text and verdict in " ".join(command.output.split())
        assert f"#{delivered['seq']} {delivered['image_key']}" in answer.text
        refused = client.post("/provenance", data={"csrf": token}, files={"file": ("x.txt", b"text", "text/plain")})
        assert refused.status_code == 400 and "PNG, JPEG and WebP" in refused.text
        image_page = client.get("/image", params={"key": delivered["image_key"]})
        assert "Provenance of the stored object" in image_page.text and "found by sha256" in image_page.text
        assert "carries metadata only" in image_page.text  # 32x32: no watermark, and the page says so
