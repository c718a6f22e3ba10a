"""The authors' pages: upload a sheet, see what it will do, start it, watch it, collect the images.

An upload is kept in the bucket under `uploads/<author>/<sha256>/<file name>`; its page checks it
afresh on every view (`ldm_batch.sheet_check`). "Start" puts it into the inbox exactly as
`ldm-batch submit` does, naming the author, and starts the inbox sweep: the Prefect deployment
when one is served (`ldm-batch serve`), otherwise a run in this process. Authors see their own
uploads and runs, and of their images only the delivered ones: never a quarantined image.
"""

from __future__ import annotations

import io
import threading
import zipfile
from dataclasses import dataclass
from pathlib import PurePosixPath

from fastapi import APIRouter, Form, HTTPException, Request, UploadFile
from fastapi.responses import JSONResponse, RedirectResponse, Response

from ldm_batch.audit import AuditLog
from ldm_batch.config import Settings, settings_in_use
from ldm_batch.contact_sheet import MAX_IMAGES, contact_sheet
from ldm_batch.console.csrf import check_csrf
from ldm_batch.inbox import Inbox
from ldm_batch.schedules import (ScheduleError, add_schedule, change_schedule, prefect_client, prefect_server,
                                 schedules_of)
from ldm_batch.sheet_check import SheetCheck, check_sheet
from ldm_batch.sheets import SAFE_NAME
from ldm_batch.storage import ObjectStore

USES = ("commercial", "non-commercial")
SHOWN = ("delivered", "approved")  # what an author may see and download of a run


@dataclass
class Console:
    """What the pages share: the app's stores, policies and screens, and its page helpers."""

    settings: Settings
    store: ObjectStore
    log: AuditLog
    policies: object
    screen: object  # the text screen, loaded once
    page: object  # (request, template, status_code=200, **context) -> response
    signed_in: object  # (request, *roles) -> account name
    link: object  # presigned URL of a key


def router(c: Console) -> APIRouter:
    routes = APIRouter()

    def upload_of(author: str, sha: str) -> tuple[str, bytes]:
        if not all(ch in "0123456789abcdef" for ch in sha) or len(sha) != 64:
            raise HTTPException(404, "no such upload")
        found = c.store.children(f"uploads/{author}/{sha}/")
        if not found:
            raise HTTPException(404, "no such upload of yours")
        key = found[0]["Key"]
        return PurePosixPath(key).name, c.store.get(key)

    def checked(author: str, sha: str, use: str) -> tuple[SheetCheck, bytes]:
        """The author's upload checked for `use`, and its bytes."""
        if use not in USES:
            raise HTTPException(400, f"use must be one of {', '.join(USES)}")
        name, data = upload_of(author, sha)
        return check_sheet(name, data, use, c.policies, c.screen, c.log, c.settings.organisation_revenue_usd,
                           c.settings.campaign_budget), data

    @routes.get("/campaigns")
    def campaigns(request: Request):
        author = c.signed_in(request, "author")
        uploads = {}
        for obj in c.store.children(f"uploads/{author}/"):
            sha, name = obj["Key"].split("/")[2:4]
            uploads[sha] = {"sha": sha, "name": name, "uploaded": obj["LastModified"]}
        runs = {r["sheet_sha256"]: r for r in c.log.runs() if r["started_by"] == author}
        rows = [{**u, "run": runs.get(sha)} for sha, u in uploads.items()]
        rows.sort(key=lambda r: r["uploaded"], reverse=True)
        return c.page(request, "campaigns.html", uploads=rows, limits=c.policies.sheet_limits, error=None)

    @routes.post("/campaigns")
    async def upload(request: Request, file: UploadFile, csrf: str = Form("")):
        author = c.signed_in(request, "author")
        check_csrf(request, csrf)
        limit = c.policies.sheet_limits.max_bytes
        data = await file.read(limit + 1)
        name = PurePosixPath(file.filename or "sheet.csv").name
        if len(data) > limit:
            return _refuse(c, request, f"{name} is over the upload limit of {limit // 2**20} MiB")
        if PurePosixPath(name).suffix.lower() not in (".csv", ".xlsx") or not SAFE_NAME.match(name.replace(" ", "_")):
            return _refuse(c, request, f"{name!r}: upload a .csv or .xlsx sheet (letters, digits, '.', '_', '-')")
        import hashlib

        sha = hashlib.sha256(data).hexdigest()
        if not c.store.children(f"uploads/{author}/{sha}/"):
            c.store.put_new(f"uploads/{author}/{sha}/{name.replace(' ', '_')}", data)
        return RedirectResponse(f"/campaigns/{sha}", 303)

    @routes.get("/campaigns/{sha}")
    def campaign(request: Request, sha: str, use: str = "commercial"):
        author = c.signed_in(request, "author")
        check, _ = checked(author, sha, use)
        run = _run_of(c, author, sha)
        if run is None and _waiting(c, sha):  # started; the sweep has not begun the run yet
            return c.page(request, "run.html", check=check, run={"campaign": "starting"}, images=[],
                          progress={"state": "waiting", "planned": check.estimate and check.estimate.images,
                                    **dict.fromkeys(("generated", "delivered", "quarantined", "blocked", "failed"), 0)})
        if run is None:
            return c.page(request, "check.html", check=check, uses=USES, campaign=_stem(check.name))
        return c.page(request, "run.html", check=check, run=run, progress=progress(c, run, check),
                      images=[{**r, "url": c.link(r["s3_key"])} for r in shown_images(c, run["run_id"])])

    @routes.get("/campaigns/{sha}/errors.csv")
    def errors(request: Request, sha: str, use: str = "commercial"):
        author = c.signed_in(request, "author")
        check, _ = checked(author, sha, use)
        report = _csv([{"row": p.row, "column": p.column, "message": p.message} for p in check.errors],
                      ["row", "column", "message"])
        return Response(report, media_type="text/csv",
                        headers={"Content-Disposition": f'attachment; filename="{_stem(check.name)}-errors.csv"'})

    @routes.post("/campaigns/{sha}/start")
    def start(request: Request, sha: str, use: str = Form(...), campaign: str = Form(...), csrf: str = Form("")):
        author = c.signed_in(request, "author")
        check_csrf(request, csrf)
        check, data = checked(author, sha, use)
        if not SAFE_NAME.match(campaign):
            raise HTTPException(400, "campaign: use letters, digits, '.', '_' and '-'")
        if not check.startable:
            return c.page(request, "check.html", 400, check=check, uses=USES, campaign=campaign,
                          error="this sheet cannot start; see the problems below")
        item = Inbox(c.store, c.settings.inbox_prefix).submit(check.name, data, campaign, use, submitted_by=author)
        start_sweep(c.settings, item.key)
        return RedirectResponse(f"/campaigns/{sha}?use={use}", 303)

    @routes.get("/campaigns/{sha}/progress")
    def progress_json(request: Request, sha: str):
        author = c.signed_in(request, "author")
        run = _run_of(c, author, sha)
        report = Inbox(c.store, c.settings.inbox_prefix).report(sha)
        if run is None:
            state = "rejected" if report and report[0] == "rejected" else "waiting"
            return JSONResponse({"state": state})
        return JSONResponse(progress(c, run, None))

    @routes.get("/campaigns/{sha}/images.zip")
    def images_zip(request: Request, sha: str):
        author = c.signed_in(request, "author")
        run = _run_of(c, author, sha)
        if run is None:
            raise HTTPException(404, "this sheet has not run")
        return Response(delivery_zip(c, run["run_id"]), media_type="application/zip",
                        headers={"Content-Disposition": f'attachment; filename="{run["campaign"]}-images.zip"'})

    @routes.get("/campaigns/{sha}/contact-sheet.png")
    def author_contact_sheet(request: Request, sha: str):
        """The run's delivered and approved images on one sheet (the run's own contact sheet,
        with quarantined images blurred, is for reviewers)."""
        author = c.signed_in(request, "author")
        run = _run_of(c, author, sha)
        if run is None:
            raise HTTPException(404, "this sheet has not run")
        shown = shown_images(c, run["run_id"])[:MAX_IMAGES]  # what the sheet shows
        tiles = list(zip(shown, c.store.get_many([r["s3_key"] for r in shown])))
        return Response(contact_sheet(tiles), media_type="image/png")

    @routes.get("/schedules")
    def schedules(request: Request, error: str | None = None, status_code: int = 200):
        author = c.signed_in(request, "author")
        mine = []
        if prefect_server() and error is None:
            try:
                mine = schedules_of(author)
            except ScheduleError as exc:
                error = str(exc)
        uploads = {obj["Key"].split("/")[2]: obj["Key"].split("/")[3] for obj in c.store.children(f"uploads/{author}/")}
        return c.page(request, "schedules.html", status_code, server=prefect_server(), schedules=mine,
                      uploads=uploads, uses=USES, error=error)

    @routes.post("/schedules")
    def schedule_change(request: Request, action: str = Form(...), sha: str = Form(""), campaign: str = Form(""),
                        use: str = Form("commercial"), cron: str = Form(""), timezone: str = Form("UTC"),
                        schedule: str = Form(""), csrf: str = Form("")):
        author = c.signed_in(request, "author")
        check_csrf(request, csrf)
        if not prefect_server():
            return schedules(request, "schedules need a Prefect server: run `ldm-batch serve`", 400)
        try:
            if action == "add":
                if not SAFE_NAME.match(campaign):
                    raise ScheduleError("campaign: use letters, digits, '.', '_' and '-'")
                check, data = checked(author, sha, use)
                if check.errors:
                    raise ScheduleError(f"{check.name} has {len(check.errors)} problem(s); open it to see them")
                key = f"{c.settings.sheets_prefix}{author}/{check.name}"  # where deployment runs may read sheets
                c.store.put_report(key, data, "text/csv" if check.name.endswith(".csv") else "application/octet-stream")
                add_schedule(author, f"s3://{c.store.bucket}/{key}", campaign, use, cron, timezone)
            else:
                change_schedule(author, schedule, action)
        except ScheduleError as exc:
            return schedules(request, str(exc), 400)
        return RedirectResponse("/schedules", 303)

    return routes


def _refuse(c: Console, request: Request, error: str):
    return c.page(request, "campaigns.html", 400, uploads=[], limits=c.policies.sheet_limits, error=error)


def _stem(name: str) -> str:
    return PurePosixPath(name).stem.replace(" ", "_")


def _waiting(c: Console, sha: str) -> bool:
    """Whether these bytes wait in the inbox (started, and no report filed yet)."""
    inbox = Inbox(c.store, c.settings.inbox_prefix)
    return bool(c.store.children(f"{c.settings.inbox_prefix}{sha[:12]}-")) and inbox.report(sha) is None


def _run_of(c: Console, author: str, sha: str) -> dict | None:
    """The latest run of these bytes that this author started."""
    return next((r for r in reversed(c.log.runs()) if r["sheet_sha256"] == sha and r["started_by"] == author), None)


def current_images(c: Console, run_id: str) -> list[dict]:
    """The run's image records, each as its latest review left it (a review record is a copy
    of the image's record with the decision and, once approved, the delivered object)."""
    latest = {r["image_key"]: r for r in c.log.query(kind="image", run_id=run_id)}
    latest |= {r["image_key"]: r for r in c.log.query(kind="review", run_id=run_id)}
    return list(latest.values())


def shown_images(c: Console, run_id: str) -> list[dict]:
    """What an author may see of a run: delivered and approved images, stored under delivery/."""
    return [r for r in current_images(c, run_id) if r["decision"] in SHOWN and r["s3_key"]
            and r["s3_key"].startswith(c.settings.delivery_prefix)]


def progress(c: Console, run: dict, check: SheetCheck | None) -> dict:
    counts: dict[str, int] = {}
    for record in c.log.query(kind="image", run_id=run["run_id"]):
        counts[record["decision"]] = counts.get(record["decision"], 0) + 1
    state = run["status"]
    return {"state": "done" if state == "finished" else state, "run_id": run["run_id"],
            "planned": run["summary"].get("images") if run["summary"] else (check.estimate.images if check and
                                                                           check.estimate else None),
            "generated": sum(counts.values()) - counts.get("failed", 0), "delivered": counts.get("delivered", 0),
            "quarantined": counts.get("quarantined", 0), "blocked": counts.get("blocked", 0),
            "failed": counts.get("failed", 0)}


def delivery_zip(c: Console, run_id: str) -> bytes:
    """The run's delivered images and a manifest.csv (asset id, prompt, seed, model, licenses,
    sha256): only objects under delivery/, never quarantined ones."""
    buffer, manifest = io.BytesIO(), []
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for record in shown_images(c, run_id):
            name = f"images/{PurePosixPath(record['s3_key']).name}"
            archive.writestr(name, c.store.get(record["s3_key"]))
            manifest.append({"file": name, "asset_id": record["asset_id"], "variant": record["variant"],
                             "prompt": record["prompt"], "seed": record["seed"], "model": record["model_id"],
                             "model_license": (record["model_license"] or {}).get("id"),
                             "loras": "; ".join(f"{lora['id']} ({lora['license'].get('id')})" for lora in record["loras"]),
                             "sha256": record["image_sha256"]})
        archive.writestr("manifest.csv", _csv(manifest, ["file", "asset_id", "variant", "prompt", "seed", "model",
                                                         "model_license", "loras", "sha256"]))
    return buffer.getvalue()


def _csv(rows: list[dict], columns: list[str]) -> str:
    """CSV a spreadsheet opens safely: cells that look like formulas are defused."""
    import pandas as pd

    from ldm_batch.audit.export import defuse_formulas

    return defuse_formulas(pd.DataFrame(rows, columns=columns)).to_csv(index=False)


def start_sweep(settings: Settings, key: str) -> None:
    """Run the inbox sweep for one sheet: the served deployment when there is one, otherwise in
    a thread of this process (the run page follows it through the audit log either way)."""
    if _deployment_served():
        from prefect.deployments import run_deployment

        run_deployment("inbox-sweep/inbox-sweep", parameters={"keys": [key]}, timeout=0)
        return

    def sweep() -> None:
        from ldm_batch.orchestration import local_flow

        with settings_in_use(settings):
            try:
                local_flow("inbox-sweep")(keys=[key])
            except Exception:  # the sweep files its report and the run its state; nothing to add here
                pass

    threading.Thread(target=sweep, name=f"sweep-{key}", daemon=True).start()


def _deployment_served() -> bool:
    """Whether the configured Prefect server (PREFECT_API_URL) serves the inbox sweep."""
    if not prefect_server():
        return False
    from prefect.exceptions import ObjectNotFound

    try:
        with prefect_client() as client:
            client.read_deployment_by_name("inbox-sweep/inbox-sweep")
        return True
    except ObjectNotFound:
        return False
