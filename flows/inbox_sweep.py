"""Inbox sweep: run every sheet waiting in the S3 inbox once, then file it with its report.

    for each sheet under inbox/ (oldest first):
        claim its bytes (If-None-Match) -> campaign-batch (a subflow) -> processed/ or rejected/

Scheduled by the `inbox-sweep` deployment (prefect.yaml) and started at once by
`ldm-batch submit`. The rules (claims, copies, where reports go) live in ldm_batch.inbox.
"""

from __future__ import annotations

import socket

from prefect import flow, runtime

from flows.campaign_batch import campaign_batch
from ldm_batch.config import current_settings
from ldm_batch.inbox import Inbox, InboxSheet
from ldm_batch.parts import Parts
from ldm_batch.problems import Problem, Refused


@flow(name="inbox-sweep")
def inbox_sweep(keys: list[str] | None = None) -> dict:
    """Returns {"processed": [...], "rejected": [...], "waiting": [...], "failed": [...]}, each
    entry naming the sheet, its report and (for runs) the run id; fails if any run failed."""
    settings = current_settings()
    store = Parts.of(settings).store
    store.ensure_bucket()
    inbox = Inbox(store, settings.inbox_prefix)
    me = f"{socket.gethostname()}/{runtime.flow_run.id or 'local'}"
    result = {"processed": [], "rejected": [], "waiting": [], "failed": []}
    for sheet in inbox.waiting(keys):
        if not inbox.claim(sheet, by=me):
            outcome, entry = _already_taken(inbox, sheet)
        else:
            outcome, entry = _run(inbox, sheet)
        result[outcome].append(entry)
    if result["failed"]:
        raise RuntimeError(f"{len(result['failed'])} inbox sheet(s) failed and stay in the inbox for the next "
                           f"sweep: {result['failed']}")
    return result


def _run(inbox: Inbox, sheet: InboxSheet) -> tuple[str, dict]:
    if problems := inbox.problems(sheet):
        return _reject(inbox, sheet, problems)
    try:
        summary = campaign_batch(sheet=sheet.uri, campaign=sheet.campaign, use=sheet.use, started_by=sheet.submitted_by)
    except Refused as exc:
        return _reject(inbox, sheet, exc.problems, campaign=sheet.campaign)
    except Exception as exc:  # not the sheet's fault: try again next sweep
        inbox.release(sheet)
        return "failed", {"sheet": sheet.key, "error": f"{type(exc).__name__}: {exc}"}
    report = inbox.file(sheet, "processed", summary.model_dump(mode="json"))
    return "processed", {"sheet": sheet.key, "report": report, "run_id": summary.run_id}


def _reject(inbox: Inbox, sheet: InboxSheet, problems: list[Problem], **extra) -> tuple[str, dict]:
    errors = [p.model_dump() for p in problems]
    report = inbox.file(sheet, "rejected", {**extra, "errors": errors})
    return "rejected", {"sheet": sheet.key, "report": report, "errors": errors}


def _already_taken(inbox: Inbox, sheet: InboxSheet) -> tuple[str, dict]:
    """These bytes were claimed before: finish an interrupted filing, reject a copy, or wait."""
    first = inbox.report(sheet.sha256)
    claim = inbox.claimed_by(sheet) or {}
    if first is None:  # its run is under way (or died; see the claim)
        return "waiting", {"sheet": sheet.key, "claimed_by": claim.get("by"), "since": claim.get("claimed_at")}
    outcome, report_key = first
    if claim.get("sheet") == sheet.key:  # filed its report, then stopped before moving the sheet
        return outcome, {"sheet": sheet.key, "report": inbox.file(sheet, outcome, None)}
    message = f"the same sheet (sha256 {sheet.sha256}) was run before; its report: {report_key}"
    outcome, entry = _reject(inbox, sheet, [Problem(message=message)], duplicate_of=report_key)
    return outcome, {**entry, "duplicate_of": report_key}
