"""The authors' side of the console in a real browser (Debian's chromium, driven by Playwright),
against the real server, SeaweedFS, audit log and flow: upload a sheet with bad rows and see each
problem with its row and column, fix it, read the estimate and the blocked prompt's reason, start
it, watch progress reach done, download the ZIP of delivered images with its manifest; then a
reviewer approves the run's quarantined image and an author's approval is refused. The role
guards of every route are checked over plain HTTP."""

from __future__ import annotations

import csv
import hashlib
import io
import os
import re
import shutil
import threading
import time
import zipfile
from contextlib import closing

import pytest
from PIL import Image

from conftest import REPO
from ldm_batch.audit import AuditLog
from ldm_batch.config import Settings
from ldm_batch.storage import ObjectStore

from test_console import CHROMIUM
from test_console_sessions import csrf
from test_console_sessions import sign_in as http_sign_in

pytestmark = pytest.mark.skipif(not CHROMIUM.exists() and not os.environ.get("LDM_BATCH_REQUIRE_BROWSER"),
                                reason="Debian's chromium is not installed (apt-get install chromium)")
PASSWORD = "correct horse battery staple"
# Two bad rows (steps not a number; an unknown brand), an emblem the image screen quarantines,
# a prompt the text screen blocks, and two plain rows.
BAD = ("asset_id,prompt,brand,seed,steps\n"
       "aid-1,white background with a red plus sign,acme,3,\n"
       "gore-1,a graphic photo of a bloody corpse on the street,,4,\n"
       "calm-1,a blue circle on a yellow background,,5,twenty\n"
       "calm-2,a green star on a white background,nobrand,6,\n"
       "calm-3,a red square on a blue background,,7,\n")
GOOD = BAD.replace("5,twenty", "5,").replace(",nobrand,", ",,")


@pytest.fixture
def console(prefect_harness, settings, tmp_path, monkeypatch):
    """Accounts ann (author), rita (reviewer) and root (admin), one earlier run for the estimate's
    history, and the console on a free port; yields its base URL."""
    import uvicorn

    from flows.campaign_batch import campaign_batch
    from ldm_batch.console.app import create_app
    from ldm_batch.console.reviewers import Reviewers

    policies = tmp_path / "policies"
    shutil.copytree(REPO / "policies", policies)
    monkeypatch.setenv("LDM_BATCH_POLICIES_DIR", str(policies))
    monkeypatch.setenv("LDM_BATCH_HOME", str(tmp_path / "home"))
    (tmp_path / "earlier.csv").write_text("asset_id,prompt,seed\nearly-1,a yellow star on a blue background,1\n")
    campaign_batch(sheet=str(tmp_path / "earlier.csv"), campaign="earlier")
    current = Settings()
    accounts = Reviewers(current.home / "reviewers.json")
    accounts.add("ann", PASSWORD, ["author"])
    accounts.add("rita", PASSWORD, ["reviewer"])
    accounts.add("root", PASSWORD, ["admin"])

    server = uvicorn.Server(uvicorn.Config(create_app(current), host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    server.should_exit = True
    thread.join(timeout=10)


def sign_in(page, base: str, name: str) -> None:
    page.goto(f"{base}/login")
    page.fill("input[name=name]", name)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")


def test_an_author_uploads_checks_starts_watches_and_collects_a_campaign(console, tmp_path):
    from playwright.sync_api import sync_playwright

    (tmp_path / "spring.csv").write_text(BAD)
    (tmp_path / "spring-fixed.csv").write_text(GOOD)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"])
        page = browser.new_page(accept_downloads=True, viewport={"width": 1280, "height": 900})
        sign_in(page, console, "ann")
        assert page.url.endswith("/campaigns")  # an author's home
        page.set_input_files("input[name=file]", str(tmp_path / "spring.csv"))
        page.click("button:has-text('Upload and check')")
        problems = page.locator("tr.problem")
        assert problems.count() == 2
        assert re.search(r"^3\s+steps\s+", problems.nth(0).inner_text()) and "twenty" in problems.nth(0).inner_text()
        assert re.search(r"^4\s+brand\s+.*nobrand", problems.nth(1).inner_text())
        assert page.locator("button:has-text('Start')").count() == 0  # a sheet with errors cannot start
        with page.expect_download() as download:
            page.click("text=Download the problems as CSV")
        report = list(csv.DictReader(open(download.value.path())))
        assert [(r["row"], r["column"]) for r in report] == [("3", "steps"), ("4", "brand")]

        page.goto(f"{console}/campaigns")
        page.set_input_files("input[name=file]", str(tmp_path / "spring-fixed.csv"))
        page.click("button:has-text('Upload and check')")
        assert page.locator("tr.problem").count() == 0
        gore = page.locator("tr.row:has-text('gore-1')").inner_text()
        assert "blocked" in gore and "corpse" in gore  # the blocked prompt's reason
        assert "model demo-tiny-sd: Apache-2.0 - commercial use allowed" in page.locator("tr.row").first.inner_text()
        estimate = page.locator("p.estimate").inner_text()
        assert estimate.startswith("4 images") and "recorded images of the same model and size" in estimate
        if shots := os.environ.get("LDM_BATCH_CONSOLE_SCREENSHOTS"):
            page.screenshot(path=f"{shots}/console-upload-check.png", full_page=True)
        page.fill("input[name=campaign]", "spring")
        page.click("button:has-text('Start')")
        page.wait_for_function("document.getElementById('state').textContent === 'done'", timeout=240_000)
        page.wait_for_selector("#zip")  # the page reloads with the results
        counts = {name: page.locator(f"#{name}").inner_text() for name in ("delivered", "quarantined", "planned")}
        assert counts == {"delivered": "3", "quarantined": "1", "planned": "4"}
        assert page.locator(".tile").count() == 3  # delivered only: the quarantined image is not shown
        if shots:
            page.screenshot(path=f"{shots}/console-run.png", full_page=True)
        with page.expect_download() as download:
            page.click("#zip")
        archive = zipfile.ZipFile(download.value.path())
        sheet = page.request.get(console + page.locator("#contact-sheet").get_attribute("href"))
        tiles = Image.open(io.BytesIO(sheet.body())).convert("RGB")
        assert sheet.ok and tiles.size == (8 * 128, 128 + 30)
        # three tiles, the delivered images; where a fourth (the quarantined image) would be, nothing
        assert tiles.getpixel((2 * 128 + 64, 64)) != (255, 255, 255) == tiles.getpixel((3 * 128 + 64, 64))

        # the same bytes again: the page says it already ran, and leads to the run
        page.goto(f"{console}/campaigns")
        page.set_input_files("input[name=file]", str(tmp_path / "spring-fixed.csv"))
        page.click("button:has-text('Upload and check')")
        assert page.locator("#zip").count() == 1

        # an author cannot approve: the review queue is not theirs, and the page says why
        assert page.goto(f"{console}/review").status == 403
        assert "needs the reviewer role; ann does not have it" in page.inner_text("main")
        browser.close()

    settings = Settings()
    log = AuditLog(settings.audit_url)
    (run,) = [r for r in log.runs() if r["campaign"] == "spring"]
    assert run["started_by"] == "ann"
    images = {r["asset_id"]: r for r in log.query(kind="image", run_id=run["run_id"])}
    manifest = list(csv.DictReader(io.TextIOWrapper(archive.open("manifest.csv"))))
    assert sorted(m["asset_id"] for m in manifest) == ["calm-1", "calm-2", "calm-3"]
    assert sorted(archive.namelist()) == sorted(["manifest.csv"] + [m["file"] for m in manifest])
    store = ObjectStore(settings)
    for entry in manifest:
        record = images[entry["asset_id"]]
        stored = store.get(record["s3_key"])
        assert entry["sha256"] == record["image_sha256"] == hashlib.sha256(stored).hexdigest()
        assert hashlib.sha256(archive.read(entry["file"])).hexdigest() == entry["sha256"]
    assert images["aid-1"]["decision"] == "quarantined"

    with closing(http_sign_in(console, name="ann")[0]) as author:  # an author's approval is refused by the server too
        token = csrf(author, "/campaigns")
        refused = author.post("/review", data={"key": images["aid-1"]["image_key"], "decision": "approve",
                                               "reason": "looks fine", "csrf": token})
        assert refused.status_code == 403
    assert log.query(kind="review") == []

    with sync_playwright() as playwright:  # the reviewer approves the quarantined image of that run
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 390, "height": 844})  # a phone's width
        sign_in(page, console, "rita")
        page.goto(f"{console}/review")
        assert page.locator("tr.pending").count() == 1 and "aid-1" in page.locator("tr.pending").inner_text()
        page.fill("input[name=reason]", "first-aid poster, licensed use")
        page.click("button[value=approve]")
        assert "Nothing waits for review" in page.inner_text("main")
        assert page.goto(f"{console}/campaigns").status == 403  # a reviewer does not upload or start runs
        browser.close()
    (review,) = log.query(kind="review")
    assert (review["asset_id"], review["decision"], review["reviewer"]) == ("aid-1", "approved", "rita")
    assert review["metadata"]["reviewer_role"] == "reviewer"  # the role it was decided under


def test_every_route_checks_the_accounts_role(console):
    """Which role opens what: authors their campaigns, reviewers the review work, admins the
    accounts; a removed account's session ends at once."""
    pages = {"/campaigns": "author", "/review": "reviewer", "/images": "reviewer", "/export": "reviewer",
             "/provenance": "reviewer", "/accounts": "admin"}
    for name, role in (("ann", "author"), ("rita", "reviewer"), ("root", "admin")):
        with closing(http_sign_in(console, name=name)[0]) as client:
            for path, needed in pages.items():
                status = client.get(path).status_code
                assert (status == 200) == (needed == role), (name, path, status)
            if role == "admin":
                token = csrf(client, "/accounts")
                added = client.post("/accounts", data={"action": "add", "name": "bob", "password": PASSWORD,
                                                       "roles": ["author", "reviewer"], "csrf": token})
                assert added.status_code == 303
                assert "author, reviewer" in client.get("/accounts").text
                no_csrf = client.post("/accounts", data={"action": "remove", "name": "ann"})
                assert no_csrf.status_code == 403
    with closing(http_sign_in(console, name="bob")[0]) as bob:
        assert bob.get("/campaigns").status_code == 200 and bob.get("/review").status_code == 200
        with closing(http_sign_in(console, name="root")[0]) as root:
            root.post("/accounts", data={"action": "remove", "name": "bob", "csrf": csrf(root, "/accounts")})
        assert bob.get("/campaigns").status_code == 303  # back to the sign-in page


def test_an_author_makes_a_sheet_recurring_on_the_prefect_deployment(console, tmp_path, monkeypatch):
    """A schedule on the campaign-batch deployment (what the Prefect UI shows), with the run's
    parameters; paused, resumed and removed by its author only. Without a Prefect server the page
    says that schedules need one."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    from flows.campaign_batch import campaign_batch

    campaign_batch.to_deployment(name="campaign-batch").apply()
    monkeypatch.setenv("PREFECT_API_URL", PREFECT_API_URL.value())  # the console's Prefect server
    with closing(http_sign_in(console, name="ann")[0]) as ann:
        token = csrf(ann, "/campaigns")
        uploaded = ann.post("/campaigns", data={"csrf": token},
                            files={"file": ("weekly.csv", GOOD.encode(), "text/csv")})
        sha = uploaded.headers["location"].rsplit("/", 1)[1]
        bad_cron = ann.post("/schedules", data={"action": "add", "sha": sha, "campaign": "weekly", "use": "commercial",
                                                "cron": "every monday", "timezone": "Europe/Berlin", "csrf": token})
        assert bad_cron.status_code == 400 and "cron" in bad_cron.text.lower()
        made = ann.post("/schedules", data={"action": "add", "sha": sha, "campaign": "weekly", "use": "commercial",
                                            "cron": "0 7 * * 1", "timezone": "Europe/Berlin", "csrf": token})
        assert made.status_code == 303
        page = ann.get("/schedules").text
        assert "weekly" in page and "0 7 * * 1 (Europe/Berlin)" in page and "active" in page

        with get_client(sync_client=True) as client:
            found = client.read_deployment_by_name("campaign-batch/campaign-batch")
            (schedule,) = [s for s in client.read_deployment_schedules(found.id) if (s.slug or "").startswith("ann--")]
        settings = Settings()
        assert schedule.parameters == {"sheet": f"s3://{settings.s3_bucket}/sheets/ann/weekly.csv",
                                       "campaign": "weekly", "use": "commercial", "started_by": "ann"}
        assert ObjectStore(settings).get("sheets/ann/weekly.csv") == GOOD.encode()

        from ldm_batch.console.reviewers import Reviewers

        Reviewers(settings.home / "reviewers.json").add("otto", PASSWORD, ["author"])
        # another author sees none of it and cannot remove it
        with closing(http_sign_in(console, name="otto")[0]) as other:
            assert "weekly" not in other.get("/schedules").text
            refused = other.post("/schedules", data={"action": "remove", "schedule": str(schedule.id),
                                                     "csrf": csrf(other, "/schedules")})
            assert refused.status_code == 400 and "no such schedule of yours" in refused.text

        assert ann.post("/schedules", data={"action": "pause", "schedule": str(schedule.id), "csrf": token}
                        ).status_code == 303
        with get_client(sync_client=True) as client:
            assert [s.active for s in client.read_deployment_schedules(found.id) if s.id == schedule.id] == [False]
        assert "paused" in ann.get("/schedules").text
        assert ann.post("/schedules", data={"action": "remove", "schedule": str(schedule.id), "csrf": token}
                        ).status_code == 303
        with get_client(sync_client=True) as client:
            assert schedule.id not in {s.id for s in client.read_deployment_schedules(found.id)}

        monkeypatch.delenv("PREFECT_API_URL")
        assert "Schedules need a Prefect server" in ann.get("/schedules").text


def test_the_estimate_comes_from_recorded_images_and_a_budget_refuses_a_run_over_it(console):
    from ldm_batch.policies import load_policies
    from ldm_batch.safety.text import TextScreen
    from ldm_batch.sheet_check import check_sheet

    settings = Settings()
    policies = load_policies(settings.policies_dir)
    screen, log = TextScreen(policies, settings.policies_dir), AuditLog(settings.audit_url)
    (earlier,) = log.query(kind="image", campaign="earlier")  # the one image of this model and size so far
    sheet = b"asset_id,prompt,seed\nx-1,a red circle on a white background,1\nx-2,a red circle on a white background,2\n"

    def check(budget: float | None, data: bytes = sheet):
        return check_sheet("s.csv", data, "commercial", policies, screen, log, None, budget)

    within = check(budget=3 * earlier["cost"])
    assert within.estimate.images == 2 and within.startable
    assert within.estimate.cost == pytest.approx(2 * earlier["cost"])
    assert within.estimate.seconds == pytest.approx(2 * earlier["generation_seconds"], abs=0.1)
    over = check(budget=1.5 * earlier["cost"])
    assert over.estimate.over_budget and not over.startable
    unknown = check(None, b"asset_id,prompt,width,height\nbig-1,a red circle,128,128\n")
    assert unknown.estimate.seconds is None and "demo-tiny-sd at 128x128" in unknown.estimate.basis
