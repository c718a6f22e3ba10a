"""Every console form carries the session's CSRF token; every POST checks it."""

from __future__ import annotations

import secrets

from fastapi import HTTPException, Request


def csrf_token(request: Request) -> str:
    if "csrf" not in request.session:
        request.session["csrf"] = secrets.token_urlsafe(32)
    return request.session["csrf"]


def check_csrf(request: Request, token: str) -> None:
    if not token or not secrets.compare_digest(token, request.session.get("csrf", "")):
        raise HTTPException(403, "the form's CSRF token is missing or wrong; reload the page")
