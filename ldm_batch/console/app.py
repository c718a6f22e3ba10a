"""The console: server-rendered pages over the audit log, the review queue and the authors' campaigns.

Every page needs a signed-in account (in `<home>/reviewers.json`, argon2 hashes; add one with
`ldm-batch reviewer add NAME [--role author|reviewer|admin]`) holding the page's role:
reviewers see runs, images, lineage, the queue and export; authors their campaigns
(`campaigns.py`); admins the accounts. Sessions are signed cookies (HttpOnly,
SameSite=strict, Secure with `--secure-cookies`) that name the account's session version:
signing out, a new password or a removed account ends them at once. Failed sign-ins make a
name and an address wait, longer after each. Every form carries the session's CSRF token. Images are shown
through presigned URLs that expire after five minutes; nothing in the bucket is public. A review
decision goes through `ldm_batch.review.decide`, exactly as `ldm-batch review` does.
"""

from __future__ import annotations

import os
import secrets
from datetime import UTC, datetime
from pathlib import Path

from fastapi import FastAPI, Form, HTTPException, Request, UploadFile
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.sessions import SessionMiddleware

from ldm_batch.audit import AuditLog
from ldm_batch.audit.export import export_bytes
from ldm_batch.audit.seal import Sealer
from ldm_batch.audit.lineage import lineage, lineage_rows
from ldm_batch.config import Settings
from ldm_batch.console.campaigns import Console, router
from ldm_batch.console.csrf import check_csrf, csrf_token
from ldm_batch.console.reviewers import ROLES, Reviewers
from ldm_batch.console.throttle import LoginThrottle
from ldm_batch.policies import load_policies
from ldm_batch.problems import Refused
from ldm_batch.provenance_check import check_file
from ldm_batch.review import ReviewError, decide
from ldm_batch.safety.text import TextScreen
from ldm_batch.storage import ObjectStore

TEMPLATES = Jinja2Templates(directory=Path(__file__).parent / "templates")
FILTERS = ("campaign", "brand", "model", "license", "commercial", "decision", "since", "until", "text")
LINK_SECONDS = 300
MEDIA_TYPES = {"csv": "text/csv", "parquet": "application/vnd.apache.parquet"}
MAX_UPLOAD = 32 * 2**20  # a file to check; larger ones go through the CLI


def create_app(settings: Settings, secure_cookies: bool = False) -> FastAPI:
    """The console app; `secure_cookies` when it is served over HTTPS (cookies never sent in clear)."""
    store = ObjectStore(settings)
    log = AuditLog(settings.audit_url, Sealer.for_settings(settings, store))
    log.migrate()
    reviewers = Reviewers(settings.home / "reviewers.json")
    throttle = LoginThrottle()
    policies = load_policies(settings.policies_dir)
    watermark = policies.provenance.watermark
    anchors = settings.c2pa_trust_anchors.read_text() if settings.c2pa_trust_anchors else None
    app = FastAPI(title="ldm-batch console", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(SessionMiddleware, secret_key=_session_key(settings.home), same_site="strict",
                       max_age=8 * 3600, https_only=secure_cookies)

    def page(request: Request, template: str, status_code: int = 200, **context) -> HTMLResponse:
        name = request.session.get("reviewer")
        return TEMPLATES.TemplateResponse(request, template, {
            "reviewer": name, "roles": reviewers.roles(name) if name else [], "csrf": csrf_token(request),
            **context}, status_code=status_code)

    def signed_in(request: Request, *roles: str) -> str:
        """The signed-in account's name; 403 unless it holds one of `roles` (any role if none named)."""
        name = request.session.get("reviewer")
        if not name or reviewers.session(name) != request.session.get("session"):
            request.session.clear()  # signed out, new password, or the account was removed
            raise HTTPException(303, headers={"Location": "/login"})
        if roles and not set(roles) & set(reviewers.roles(name)):
            raise HTTPException(403, f"this page needs the {' or '.join(roles)} role; {name} does not have it")
        return name

    @app.exception_handler(StarletteHTTPException)
    async def refused_page(request: Request, exc: StarletteHTTPException):
        """Refusals (400, 403, 404) as a page a person reads; redirects and the rest as FastAPI answers them."""
        if exc.status_code in (400, 403, 404) and "text/html" in request.headers.get("accept", ""):
            return page(request, "refused.html", exc.status_code, message=exc.detail)
        return await http_exception_handler(request, exc)

    def link(key: str | None) -> str | None:
        return store.presigned_url(key, LINK_SECONDS) if key else None

    @app.get("/login", response_class=HTMLResponse)
    def login_form(request: Request):
        return page(request, "login.html")

    @app.post("/login")
    def login(request: Request, name: str = Form(...), password: str = Form(...), csrf: str = Form("")):
        check_csrf(request, csrf)
        address = request.client.host if request.client else "unknown"
        if wait := throttle.wait_seconds(name, address):
            response = page(request, "login.html", 429, error=f"too many failed sign-ins; try again in "
                                                              f"{int(wait) + 1} seconds")
            response.headers["Retry-After"] = str(int(wait) + 1)
            return response
        if not reviewers.check(name, password):
            throttle.failed(name, address)
            return page(request, "login.html", 401, error="unknown reviewer or wrong password")
        throttle.succeeded(name, address)
        request.session.clear()
        request.session.update(reviewer=name, session=reviewers.session(name), csrf=secrets.token_urlsafe(32))
        return RedirectResponse("/", 303)

    @app.post("/logout")
    def logout(request: Request, csrf: str = Form("")):
        check_csrf(request, csrf)
        if name := request.session.get("reviewer"):
            reviewers.end_sessions(name)  # a copy of the cookie stops working too
        request.session.clear()
        return RedirectResponse("/login", 303)

    @app.get("/", response_class=HTMLResponse)
    def runs(request: Request):
        name = signed_in(request)
        if "reviewer" not in reviewers.roles(name):  # an author's home is their campaigns
            return RedirectResponse("/campaigns" if "author" in reviewers.roles(name) else "/accounts", 303)
        rows = []
        for run in reversed(log.runs()):
            summary = run["summary"]
            sheet_uri = summary.get("contact_sheet")
            rows.append({**run, "delivered": summary.get("images_delivered"), "cost": summary.get("cost"),
                         "blocked": summary.get("images_blocked"), "prompts_refused":
                         (summary.get("prompts_blocked") or 0) + (summary.get("prompts_held") or 0),
                         "contact_sheet": link(sheet_uri.split("/", 3)[3]) if sheet_uri else None})
        return page(request, "runs.html", runs=rows)

    @app.get("/images", response_class=HTMLResponse)
    def images(request: Request):
        signed_in(request, "reviewer")
        chosen = {name: request.query_params.get(name, "").strip() for name in FILTERS}
        found = _images(log, chosen)
        tiles = [{**r, "url": link(r["s3_key"])} for r in found]
        return page(request, "images.html", images=tiles, chosen=chosen, query=request.url.query)

    @app.get("/image", response_class=HTMLResponse)
    def image(request: Request, key: str):
        signed_in(request, "reviewer")
        records = log.query(image_key=key)
        if not records:
            raise HTTPException(404, f"no image {key!r} in the audit log")
        found = lineage(log, records)
        latest = records[-1]
        stored = None  # the stored object checked as `provenance check` would check a copy
        if latest["s3_key"]:
            stored = check_file(store.get(latest["s3_key"]), latest["s3_key"], log, watermark, anchors)
        return page(request, "image.html", key=key, rows=lineage_rows(found), url=link(latest["s3_key"]),
                    pending=latest["decision"] == "quarantined", stored=stored)

    @app.get("/provenance", response_class=HTMLResponse)
    def provenance_form(request: Request):
        signed_in(request, "reviewer")
        return page(request, "provenance.html", result=None, error=None)

    @app.post("/provenance", response_class=HTMLResponse)
    async def provenance(request: Request, file: UploadFile, csrf: str = Form("")):
        signed_in(request, "reviewer")
        check_csrf(request, csrf)
        data = await file.read(MAX_UPLOAD + 1)
        if len(data) > MAX_UPLOAD:
            return page(request, "provenance.html", 413, result=None,
                        error=f"the file is over {MAX_UPLOAD // 2**20} MiB; check it with ldm-batch provenance check")
        try:
            result = check_file(data, file.filename or "upload", log, watermark, anchors)
        except Refused as exc:
            return page(request, "provenance.html", 400, result=None, error="; ".join(p.message for p in exc.problems))
        return page(request, "provenance.html", result=result, error=None)

    @app.get("/review", response_class=HTMLResponse)
    def review_queue(request: Request, error: str | None = None):
        signed_in(request, "reviewer")
        queue = [{**r.model_dump(), "url": link(r.s3_key)} for r in log.review_queue()]
        return page(request, "review.html", queue=queue, error=error)

    @app.post("/review")
    def review(request: Request, key: str = Form(...), decision: str = Form(...), reason: str = Form(""),
               csrf: str = Form("")):
        name = signed_in(request, "reviewer")
        check_csrf(request, csrf)
        if decision not in ("approve", "reject"):
            raise HTTPException(400, "decision must be approve or reject")
        try:
            decide(log, store, key, decision == "approve", reason, name, role="reviewer")
        except ReviewError as exc:
            queue = [{**r.model_dump(), "url": link(r.s3_key)} for r in log.review_queue()]
            return page(request, "review.html", 400, queue=queue, error=str(exc))
        return RedirectResponse("/review", 303)

    @app.get("/export")
    def export(request: Request, fmt: str = "csv"):
        signed_in(request, "reviewer")
        if fmt not in MEDIA_TYPES:
            raise HTTPException(400, "fmt must be csv or parquet")
        chosen = {name: request.query_params.get(name, "").strip() for name in FILTERS}
        data = export_bytes(_images(log, chosen), fmt)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        return Response(data, media_type=MEDIA_TYPES[fmt],
                        headers={"Content-Disposition": f'attachment; filename="audit-{stamp}.{fmt}"'})

    @app.get("/accounts", response_class=HTMLResponse)
    def accounts(request: Request, error: str | None = None, status_code: int = 200):
        signed_in(request, "admin")
        return page(request, "accounts.html", status_code, accounts=reviewers.accounts(), all_roles=ROLES, error=error)

    @app.post("/accounts")
    def account_change(request: Request, action: str = Form(...), name: str = Form(...), password: str = Form(""),
                       roles: list[str] = Form([]), csrf: str = Form("")):
        admin = signed_in(request, "admin")
        check_csrf(request, csrf)
        try:
            if action == "remove":
                if name == admin:
                    raise ValueError("you cannot remove your own account")
                reviewers.remove(name)  # their sessions end at once
            else:
                reviewers.add(name, password, roles)
        except ValueError as exc:
            return accounts(request, str(exc), 400)
        return RedirectResponse("/accounts", 303)

    app.include_router(router(Console(settings, store, log, policies, TextScreen(policies, settings.policies_dir),
                                      page, signed_in, link)))
    return app


def _images(log: AuditLog, chosen: dict[str, str]) -> list[dict]:
    """Image records matching the filters, each with its latest decision and reviewer."""
    records = log.query(kind="image", campaign=chosen["campaign"] or None, brand=chosen["brand"] or None,
                        model_id=chosen["model"] or None, license=chosen["license"] or None,
                        since=_moment(chosen["since"]), until=_moment(chosen["until"]),
                        text=chosen["text"] or None, limit=500)
    reviews = {r["image_key"]: r for r in log.query(kind="review", campaign=chosen["campaign"] or None)}
    found = []
    for record in records:
        review = reviews.get(record["image_key"])
        current = review["decision"] if review else record["decision"]
        if chosen["decision"] and current != chosen["decision"]:
            continue
        if chosen["commercial"] and chosen["commercial"] != ("yes" if commercial_use(record) else "no"):
            continue
        found.append({**record, "current": current, "reviewer": review["reviewer"] if review else None})
    return found


def commercial_use(record: dict) -> bool:
    """Whether the model's and every LoRA's license allow commercial use."""
    licenses = [record["model_license"] or {}] + [lora["license"] for lora in record["loras"]]
    return all(licence.get("commercial_use") for licence in licenses)


def _moment(value: str) -> datetime | None:
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise HTTPException(400, f"{value!r} is not a date (YYYY-MM-DD)") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _session_key(home: Path) -> str:
    """A signing key made once per home (0600), so sessions survive a restart."""
    path = home / "console.key"
    if not path.exists():
        home.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(48))
    return path.read_text().strip()
